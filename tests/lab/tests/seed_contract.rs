//! The contract between the lab and `kubedna-image seed`: the cluster description the lab writes
//! (`seed::ClusterDesc::to_yaml`) is accepted by the image builder's own parser, and renders a
//! seed for every node whose user-data names the node and carries the other control planes as
//! discovery seeds. Needs no root.

use std::net::Ipv4Addr;

use kubedna_lab::lab::Discovery;
use kubedna_lab::seed::ClusterDesc;
use kubedna_lab::Role;

#[test]
fn cluster_description_is_accepted_and_renders_every_node() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let desc = ClusterDesc {
        name: "lab-x".into(),
        prefix: 24,
        gateway: Ipv4Addr::new(198, 18, 0, 1),
        nodes: vec![
            (
                "cp-1".into(),
                Role::ControlPlane,
                Ipv4Addr::new(198, 18, 0, 2),
            ),
            (
                "cp-2".into(),
                Role::ControlPlane,
                Ipv4Addr::new(198, 18, 0, 3),
            ),
            (
                "cp-3".into(),
                Role::ControlPlane,
                Ipv4Addr::new(198, 18, 0, 4),
            ),
            (
                "worker-1".into(),
                Role::Worker,
                Ipv4Addr::new(198, 18, 0, 5),
            ),
        ],
        discovery: Discovery::Seeds,
        doctor: None,
    };
    let path = dir.path().join("cluster.yaml");
    std::fs::write(&path, desc.to_yaml()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("cluster-secret"), "0".repeat(64))
        .unwrap_or_else(|e| panic!("{e}"));
    let cluster = kubedna_image::seed::load_cluster(&path).unwrap_or_else(|e| panic!("{e}"));
    for (name, _, _) in &desc.nodes {
        let seed = kubedna_image::seed::render(&cluster, &path, name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let user_data = seed
            .files
            .iter()
            .find(|(f, _)| f == "user-data")
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| panic!("{name}: no user-data"));
        assert!(user_data.starts_with("#cloud-config"), "{name}");
        assert!(
            user_data.contains(name.as_str()),
            "{name}: node name missing"
        );
        if name != "cp-2" {
            assert!(
                user_data.contains("198.18.0.3"),
                "{name}: cp-2 missing from seeds"
            );
        }
        assert!(
            user_data.contains("kind: \"lab\"") || user_data.contains("kind: lab"),
            "{name}: provider"
        );
    }
}

#[test]
fn a_multicast_lab_renders_no_seeds_and_multicast_on() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let desc = ClusterDesc {
        name: "lab-m".into(),
        prefix: 24,
        gateway: Ipv4Addr::new(198, 18, 11, 1),
        nodes: vec![
            (
                "cp-1".into(),
                Role::ControlPlane,
                Ipv4Addr::new(198, 18, 11, 2),
            ),
            (
                "worker-1".into(),
                Role::Worker,
                Ipv4Addr::new(198, 18, 11, 3),
            ),
        ],
        discovery: Discovery::Multicast,
        doctor: None,
    };
    let path = dir.path().join("cluster.yaml");
    std::fs::write(&path, desc.to_yaml()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("cluster-secret"), "0".repeat(64))
        .unwrap_or_else(|e| panic!("{e}"));
    let cluster = kubedna_image::seed::load_cluster(&path).unwrap_or_else(|e| panic!("{e}"));
    for name in ["cp-1", "worker-1"] {
        let seed = kubedna_image::seed::render(&cluster, &path, name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let user_data = seed
            .files
            .iter()
            .find(|(f, _)| f == "user-data")
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| panic!("{name}: no user-data"));
        assert!(user_data.contains("seeds: []"), "{name}: {user_data}");
        assert!(user_data.contains("enabled: true"), "{name}: {user_data}");
    }
}

#[test]
fn a_doctor_lab_gives_its_control_planes_the_doctor_and_its_workers_nothing() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let desc = ClusterDesc {
        name: "p-doc".into(),
        prefix: 24,
        gateway: Ipv4Addr::new(198, 18, 80, 1),
        nodes: vec![
            (
                "cp-1".into(),
                Role::ControlPlane,
                Ipv4Addr::new(198, 18, 80, 2),
            ),
            (
                "worker-1".into(),
                Role::Worker,
                Ipv4Addr::new(198, 18, 80, 3),
            ),
        ],
        discovery: Discovery::Seeds,
        doctor: Some((
            "http://198.18.80.1:8089/v1".into(),
            [("backoffSeconds".to_string(), 60)].into(),
        )),
    };
    let path = dir.path().join("cluster.yaml");
    std::fs::write(&path, desc.to_yaml()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("cluster-secret"), "0".repeat(64))
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("hcloud-token"), "t0ken").unwrap_or_else(|e| panic!("{e}"));
    let cluster = kubedna_image::seed::load_cluster(&path).unwrap_or_else(|e| panic!("{e}"));
    for (name, doctor) in [("cp-1", true), ("worker-1", false)] {
        let seed = kubedna_image::seed::render(&cluster, &path, name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let user_data = &seed
            .files
            .iter()
            .find(|(f, _)| f == "user-data")
            .unwrap_or_else(|| panic!("{name}: no user-data"))
            .1;
        assert_eq!(
            user_data.contains("/etc/kubedna/provider-token"),
            doctor,
            "{name}"
        );
        assert_eq!(
            user_data.contains("hcloudApi: \"http://198.18.80.1:8089/v1\""),
            doctor,
            "{name}"
        );
        assert_eq!(user_data.contains("backoffSeconds: 60"), doctor, "{name}");
        assert_eq!(
            user_data.contains("user-data.worker.tmpl"),
            doctor,
            "{name}"
        );
    }
}
