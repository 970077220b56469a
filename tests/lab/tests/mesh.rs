//! The mesh on real lab nodes (issue 5): five nspawn nodes running the agent from the node image
//! find each other through seeds, and again through multicast beacons with no seeds; a killed
//! node is seen down by all the others (three times, for the median in docs/benchmarks.md); a
//! partitioned node is marked failed and comes back after `heal`; a node 150 ms away each way
//! (lab `delay`) shows that RTT everywhere and is never declared down.
//!
//! Needs root and a node image carrying this agent (`KUBEDNA_LAB_IMAGE`, as `scripts/test` sets
//! it); without the agent in the image it fails rather than skips. Every wait polls `kubedna
//! peers -o json` inside the nodes with a deadline. Labs `m-seeds` (198.18.10.0/24) and `m-mcast`
//! (198.18.11.0/24). Timings are printed as `MESH FIGURE ...` lines.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kubedna_lab::lab::{self, Discovery, Lab, UpOptions};
use serde_json::Value;

const ROOT: &str = "/var/lib/kubedna-lab";
const NODES: [&str; 5] = ["cp-1", "cp-2", "cp-3", "worker-1", "worker-2"];

fn opts(name: &str, subnet: &str) -> UpOptions {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root: they create bridges, namespaces, mounts and containers"
    );
    let image = std::env::var_os("KUBEDNA_LAB_IMAGE")
        .map(PathBuf::from)
        .expect("set KUBEDNA_LAB_IMAGE to a node image with the agent (scripts/test does)");
    UpOptions {
        root: ROOT.into(),
        name: name.into(),
        control_planes: 3,
        workers: 2,
        image,
        image_cache: kubedna_lab::image::DEFAULT_CACHE.into(),
        subnet: subnet.parse().unwrap_or_else(|e| panic!("{e}")),
        timeout: Duration::from_secs(180),
    }
}

/// Takes the lab down when the test ends, even by panic.
struct Down(&'static str);

impl Drop for Down {
    fn drop(&mut self) {
        let res = lab::down(ROOT.as_ref(), self.0);
        if !std::thread::panicking() {
            res.unwrap_or_else(|e| panic!("down {}: {e}", self.0));
            let left = lab::leftovers(ROOT.as_ref(), self.0);
            assert!(left.is_empty(), "lab {} left {left:?}", self.0);
        }
    }
}

fn up(o: &UpOptions, discovery: Discovery) -> Lab {
    lab::down(&o.root, &o.name).unwrap_or_else(|e| panic!("pre-clean {}: {e}", o.name));
    let started = Instant::now();
    let lab = Lab::up_with(o, discovery).unwrap_or_else(|e| panic!("up {}: {e}", o.name));
    eprintln!(
        "MESH FIGURE {}: lab up (boot + agents ready) {:.1} s",
        o.name,
        started.elapsed().as_secs_f64()
    );
    lab
}

/// One row of `kubedna peers -o json`: (name, liveness, state).
type Row = (String, String, String);

/// The `peers` rows of `kubedna peers -o json` in `node`, or None while its agent does not
/// answer.
fn peer_rows(lab: &Lab, node: &str) -> Option<Vec<Value>> {
    let out = lab
        .exec(
            node,
            &["kubedna", "peers", "-o", "json"],
            Some(Duration::from_secs(10)),
        )
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_str(&out.stdout).ok()?;
    v.get("peers")?.as_array().cloned()
}

/// `node`'s peers, or None while its agent does not answer.
fn peers(lab: &Lab, node: &str) -> Option<Vec<Row>> {
    let s = |p: &Value, k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    Some(
        peer_rows(lab, node)?
            .iter()
            .map(|p| (s(p, "name"), s(p, "liveness"), s(p, "state")))
            .collect(),
    )
}

/// Whether `rows` show `name` alive (some entry alive: a restarted node rejoins under a new
/// generation, next to its old, down entry).
fn alive(rows: &[Row], name: &str) -> bool {
    rows.iter().any(|(n, l, _)| n == name && l == "alive")
}

/// Whether `rows` show `name` failed: known, no entry alive or suspect, none that left.
fn failed(rows: &[Row], name: &str) -> bool {
    let mine: Vec<&Row> = rows.iter().filter(|(n, _, _)| n == name).collect();
    !mine.is_empty() && mine.iter().all(|(_, l, s)| l == "down" && s != "leaving")
}

/// Polls every node in `observers` until `done(observer, rows)` holds for all of them; returns
/// the time it took, panics with the last views at the deadline.
fn await_all(
    lab: &Lab,
    observers: &[&str],
    what: &str,
    within: Duration,
    done: impl Fn(&str, &[Row]) -> bool,
) -> Duration {
    let started = Instant::now();
    let mut pending: Vec<&str> = observers.to_vec();
    let mut last: Vec<(String, Option<Vec<Row>>)> = Vec::new();
    loop {
        last.clear();
        pending.retain(|node| {
            let rows = peers(lab, node);
            let ok = rows.as_deref().is_some_and(|r| done(node, r));
            if !ok {
                last.push((node.to_string(), rows));
            }
            !ok
        });
        if pending.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{what}: not within {within:?}; views: {last:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn all_see_all_alive(lab: &Lab, what: &str) -> Duration {
    await_all(lab, &NODES, what, Duration::from_secs(60), |me, rows| {
        NODES.iter().filter(|n| **n != me).all(|n| alive(rows, n))
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn seeds_kill_and_partition() {
    let o = opts("m-seeds", "198.18.10.0/24");
    let _down = Down("m-seeds");
    let mut lab = up(&o, Discovery::Seeds);

    let t = all_see_all_alive(&lab, "5 nodes see each other through seeds");
    eprintln!(
        "MESH FIGURE m-seeds: all 5 see 4 alive peers {:.1} s after up returned",
        t.as_secs_f64()
    );

    // Power cut, three times: every other node must see worker-2 failed (not left); after a
    // boot it rejoins and everyone sees it alive again.
    let others: Vec<&str> = NODES.iter().copied().filter(|n| *n != "worker-2").collect();
    let mut kill_times = Vec::new();
    for round in 1..=3 {
        lab.kill("worker-2").unwrap_or_else(|e| panic!("kill: {e}"));
        let t = await_all(
            &lab,
            &others,
            "kill seen by all",
            Duration::from_secs(60),
            |_, rows| failed(rows, "worker-2"),
        );
        eprintln!(
            "MESH FIGURE m-seeds: kill {round} seen by all 4 others in {:.1} s",
            t.as_secs_f64()
        );
        kill_times.push(t.as_secs_f64());
        lab.start(&["worker-2".to_string()], Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("start: {e}"));
        let t = all_see_all_alive(&lab, "worker-2 back after its reboot");
        eprintln!(
            "MESH FIGURE m-seeds: rebooted worker-2 seen alive by all {:.1} s after it was ready",
            t.as_secs_f64()
        );
    }
    eprintln!(
        "MESH FIGURE m-seeds: kill seen by all, median of 3: {:.1} s",
        median(kill_times)
    );

    // Partition cp-3 away: the others mark it failed; after heal everyone sees everyone.
    let rest: Vec<String> = others
        .iter()
        .chain(std::iter::once(&"worker-2"))
        .filter(|n| **n != "cp-3")
        .map(|n| n.to_string())
        .collect();
    lab.partition(vec![rest.clone(), vec!["cp-3".to_string()]])
        .unwrap_or_else(|e| panic!("partition: {e}"));
    let rest_refs: Vec<&str> = rest.iter().map(String::as_str).collect();
    let t = await_all(
        &lab,
        &rest_refs,
        "partitioned cp-3 marked failed",
        Duration::from_secs(60),
        |_, rows| failed(rows, "cp-3"),
    );
    eprintln!(
        "MESH FIGURE m-seeds: partitioned cp-3 marked failed by the 4 others in {:.1} s",
        t.as_secs_f64()
    );
    await_all(
        &lab,
        &["cp-3"],
        "cp-3 sees the others failed",
        Duration::from_secs(60),
        |_, rows| rest_refs.iter().all(|n| failed(rows, n)),
    );
    lab.heal().unwrap_or_else(|e| panic!("heal: {e}"));
    let t = all_see_all_alive(&lab, "cp-3 back after heal");
    eprintln!(
        "MESH FIGURE m-seeds: after heal all 5 see 4 alive in {:.1} s",
        t.as_secs_f64()
    );
}

#[test]
fn multicast_without_seeds() {
    let o = opts("m-mcast", "198.18.11.0/24");
    let _down = Down("m-mcast");
    let lab = up(&o, Discovery::Multicast);
    for node in NODES {
        let out = lab
            .exec(
                node,
                &["cat", "/etc/kubedna/agent.yaml"],
                Some(Duration::from_secs(10)),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let config = &out.stdout;
        assert!(
            config.contains("seeds: []"),
            "{node} must have no seeds: {config}"
        );
    }
    let t = all_see_all_alive(&lab, "5 nodes see each other through multicast beacons");
    eprintln!(
        "MESH FIGURE m-mcast: all 5 see 4 alive peers {:.1} s after up returned",
        t.as_secs_f64()
    );

    // A far node: 150 ms each way on worker-1's link (300 ms round trips, above the 200 ms
    // direct-probe timeout). Every other node must show that RTT and must never declare
    // worker-1 down while it is merely slow.
    let mut lab = lab;
    let others: Vec<&str> = NODES.iter().copied().filter(|n| *n != "worker-1").collect();
    lab.set_delay("worker-1", 150)
        .unwrap_or_else(|e| panic!("delay: {e}"));
    let watch = Instant::now();
    let mut seen_rtt: Vec<f64> = Vec::new();
    let mut suspect_views = 0;
    while watch.elapsed() < Duration::from_secs(15) || seen_rtt.len() < others.len() {
        assert!(
            watch.elapsed() < Duration::from_secs(60),
            "RTT of the delayed worker-1 not shown by every node: {seen_rtt:?}"
        );
        seen_rtt.clear();
        for node in &others {
            let Some(w) = peer(&lab, node, "worker-1") else {
                continue;
            };
            let liveness = w.get("liveness").and_then(Value::as_str).unwrap_or("");
            assert_ne!(
                liveness, "down",
                "{node} declared the slow worker-1 down: {w}"
            );
            suspect_views += usize::from(liveness == "suspect");
            if let Some(rtt) = w
                .get("rtt_ms")
                .and_then(Value::as_f64)
                .filter(|r| *r >= 290.0)
            {
                seen_rtt.push(rtt);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "MESH FIGURE m-mcast: worker-1 at 150 ms each way for {:.0} s: never down, {suspect_views} \
         suspect views, RTT shown {:.0} ms (median of the 4 others)",
        watch.elapsed().as_secs_f64(),
        median(seen_rtt)
    );
    lab.set_delay("worker-1", 0)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// `node`'s row for `name` in `kubedna peers -o json` (its alive entry if it has several).
fn peer(lab: &Lab, node: &str, name: &str) -> Option<Value> {
    let rows: Vec<Value> = peer_rows(lab, node)?
        .into_iter()
        .filter(|p| p.get("name").and_then(Value::as_str) == Some(name))
        .collect();
    rows.iter()
        .find(|p| p.get("liveness").and_then(Value::as_str) == Some("alive"))
        .or(rows.first())
        .cloned()
}
