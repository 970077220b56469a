//! The test catalogue of tests/catalogue.rs: the project's own manifests (a namespace, a CRD and
//! its custom resources, ConfigMaps, a Deployment of the pause image) as components with their
//! dependencies, force flags and health checks.

pub(crate) const NAMESPACE: &str =
    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: kubedna-demo\n";
pub(crate) const CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.demo.kubedna.io
spec:
  group: demo.kubedna.io
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
";

pub(crate) fn widget(name: &str, size: u32) -> String {
    format!("apiVersion: demo.kubedna.io/v1\nkind: Widget\nmetadata:\n  name: {name}\n  namespace: kubedna-demo\nspec:\n  size: {size}\n")
}

pub(crate) fn config_map(name: &str, greeting: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: kubedna-demo\ndata:\n  greeting: {greeting}\n")
}

pub(crate) fn deployment(name: &str, min_ready: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: kubedna-demo
spec:
  replicas: 1
  minReadySeconds: {min_ready}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      serviceAccountName: demo
      containers:
      - name: pause
        image: registry.k8s.io/pause:3.9
        imagePullPolicy: Never
"
    )
}

pub(crate) const APP_RBAC: &str = "apiVersion: v1
kind: ServiceAccount
metadata: {name: demo, namespace: kubedna-demo}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: demo, namespace: kubedna-demo}
rules:
- apiGroups: [demo.kubedna.io]
  resources: [widgets]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: demo, namespace: kubedna-demo}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: demo}
subjects:
- {kind: ServiceAccount, name: demo, namespace: kubedna-demo}
";

pub(crate) const EXTRA_ROLE: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: kubedna-demo-extra}
rules:
- apiGroups: ['']
  resources: [configmaps]
  verbs: [get]
";

/// One component: name, dependsOn, force, health (YAML flow), files (name, content).
pub(crate) struct Comp {
    pub(crate) name: &'static str,
    pub(crate) deps: &'static [&'static str],
    pub(crate) force: bool,
    pub(crate) health: String,
    pub(crate) files: Vec<(String, String)>,
}

pub(crate) fn base() -> Comp {
    Comp {
        name: "demo-crd",
        deps: &[],
        force: false,
        health: "[{crdEstablished: {name: widgets.demo.kubedna.io}}]".into(),
        files: vec![
            ("crd/namespace.yaml".into(), NAMESPACE.into()),
            ("crd/crd.yaml".into(), CRD.into()),
        ],
    }
}

pub(crate) fn app() -> Comp {
    Comp {
        name: "demo-app",
        deps: &["demo-crd"],
        force: true,
        health: "[{deploymentAvailable: {namespace: kubedna-demo, name: demo}}]".into(),
        files: vec![
            ("app/config.yaml".into(), config_map("demo-config", "hello")),
            ("app/rbac.yaml".into(), APP_RBAC.into()),
            ("app/deployment.yaml".into(), deployment("demo", 0)),
            ("app/widget.yaml".into(), widget("demo-widget", 3)),
        ],
    }
}

pub(crate) fn extra() -> Comp {
    Comp {
        name: "demo-extra",
        deps: &["demo-crd"],
        force: false,
        health: "[]".into(),
        files: vec![(
            "extra/all.yaml".into(),
            [
                config_map("extra-a", "extra"),
                EXTRA_ROLE.into(),
                widget("extra-widget", 1),
            ]
            .join("---\n"),
        )],
    }
}

/// A chain whose middle waits: `slow-b` is available only 25 s after its pod is ready.
pub(crate) fn slow() -> Vec<Comp> {
    let maps = |prefix: &str| -> String {
        (0..10)
            .map(|i| config_map(&format!("{prefix}-{i}"), "slow"))
            .collect::<Vec<_>>()
            .join("---\n")
    };
    vec![
        Comp {
            name: "slow-a",
            deps: &["demo-app"],
            force: false,
            health: "[]".into(),
            files: vec![("slow/a.yaml".into(), maps("slow-a"))],
        },
        Comp {
            name: "slow-b",
            deps: &["slow-a"],
            force: false,
            health: "[{deploymentAvailable: {namespace: kubedna-demo, name: slow}}]".into(),
            files: vec![("slow/b.yaml".into(), deployment("slow", 25))],
        },
        Comp {
            name: "slow-c",
            deps: &["slow-b"],
            force: false,
            health: "[]".into(),
            files: vec![("slow/c.yaml".into(), maps("slow-c"))],
        },
    ]
}
