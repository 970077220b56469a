use super::*;

const T0: Unix = 1_000_000;

fn obs(mesh: MeshState, ready: ReadyState, vm: VmState) -> Observed {
    Observed {
        mesh,
        ready,
        ready_since: None,
        vm,
    }
}

/// Feeds the same observation every 10 s from T0 for `secs`, then judges at the end.
fn steady(o: Observed, secs: u64, t: &Thresholds) -> Verdict {
    let mut tr = Tracker::default();
    let mut now = T0;
    loop {
        tr.observe("n", o, t, now);
        if now >= T0 + secs {
            break;
        }
        now += 10;
    }
    judge(tr.get("n").expect("observed"), t, now)
}

#[test]
fn verdicts_by_table() {
    use MeshState as M;
    use ReadyState as R;
    use VmState as V;
    let t = Thresholds::default();
    let suspect = Verdict::Suspect;
    let healthy = Verdict::Healthy;
    let dead = |by| Verdict::Dead { by };
    #[rustfmt::skip]
    let table: &[(&str, Observed, u64, Verdict)] = &[
        ("all good", obs(M::Alive, R::Ready, V::Running), 3600, healthy),
        ("slow node: signals stay good", obs(M::Alive, R::Ready, V::Running), 3600, healthy),
        ("powered off, 20 s: not yet", obs(M::Down, R::Unknown, V::Off), 20, suspect),
        ("powered off, 30 s", obs(M::Down, R::Unknown, V::Off), 30, dead(DeadBy::Provider)),
        ("VM missing, 40 s", obs(M::Down, R::NotReady, V::Missing), 40, dead(DeadBy::Provider)),
        ("VM failed, 40 s", obs(M::Suspect, R::Unknown, V::Failed), 40, dead(DeadBy::Provider)),
        ("provider says off but the mesh sees it alive", obs(M::Alive, R::Unknown, V::Off), 3600, suspect),
        ("provider says off but the Node is Ready", obs(M::Down, R::Ready, V::Off), 3600, suspect),
        ("minority partition, 3 min, VM running", obs(M::Down, R::Unknown, V::Running), 180, suspect),
        ("partition, 14 min, VM running", obs(M::Down, R::Unknown, V::Running), 840, suspect),
        ("hung VM, 15 min", obs(M::Down, R::Unknown, V::Running), 900, dead(DeadBy::Hung)),
        ("unreachable, provider unobserved, 4 min", obs(M::Down, R::Unknown, V::Unobserved), 240, suspect),
        ("unreachable, provider unobserved, 5 min", obs(M::Down, R::Unknown, V::Unobserved), 300, dead(DeadBy::Unreachable)),
        ("mesh down alone never kills", obs(M::Down, R::Unobserved, V::Unobserved), 86_400, suspect),
        ("Node NotReady but mesh alive (kubelet stopped)", obs(M::Alive, R::NotReady, V::Running), 86_400, suspect),
        ("starting VM is not dead", obs(M::Down, R::Missing, V::Transitional), 600, suspect),
    ];
    for (name, o, secs, want) in table {
        assert_eq!(steady(*o, *secs, &t), *want, "{name}");
    }
}

#[test]
fn a_switched_off_signal_never_judges() {
    let t = Thresholds {
        provider_off: None,
        ..Thresholds::default()
    };
    // The provider's "off" is ignored; mesh and Node alone need their 300 s each.
    let o = obs(MeshState::Down, ReadyState::Unknown, VmState::Off);
    assert_eq!(steady(o, 60, &t), Verdict::Suspect);
    let t = Thresholds {
        not_ready: None,
        hung: None,
        ..Thresholds::default()
    };
    let o = obs(MeshState::Down, ReadyState::NotReady, VmState::Unobserved);
    assert_eq!(steady(o, 86_400, &t), Verdict::Suspect, "mesh alone");
}

#[test]
fn a_flapping_node_restarts_its_clock_each_time_it_is_seen_alive() {
    let t = Thresholds::default();
    let mut tr = Tracker::default();
    let down = obs(MeshState::Down, ReadyState::Unknown, VmState::Unobserved);
    let up = obs(MeshState::Alive, ReadyState::Ready, VmState::Unobserved);
    let mut now = T0;
    // Down 200 s, up 10 s, for an hour: never 300 s in a row.
    while now < T0 + 3600 {
        for _ in 0..20 {
            tr.observe("n", down, &t, now);
            now += 10;
        }
        tr.observe("n", up, &t, now);
        now += 10;
        let v = judge(tr.get("n").expect("observed"), &t, now);
        assert_ne!(
            v,
            Verdict::Dead {
                by: DeadBy::Unreachable
            },
            "at {}",
            now - T0
        );
    }
}

#[test]
fn the_api_transition_time_survives_a_new_leader_but_the_mesh_clock_does_not() {
    let t = Thresholds::default();
    // A new leader's first look: the Node says NotReady since 400 s ago; the mesh clock
    // starts now. Dead only once the mesh has been down 300 s in this leader's eyes.
    let mut tr = Tracker::default();
    let o = Observed {
        mesh: MeshState::Down,
        ready: ReadyState::NotReady,
        ready_since: Some(T0 - 400),
        vm: VmState::Unobserved,
    };
    let s = tr.observe("n", o, &t, T0).clone();
    assert_eq!(s.ready.bad_since, Some(T0 - 400));
    assert_eq!(judge(&s, &t, T0), Verdict::Suspect);
    tr.observe("n", o, &t, T0 + 300);
    assert_eq!(
        judge(tr.get("n").expect("observed"), &t, T0 + 300),
        Verdict::Dead {
            by: DeadBy::Unreachable
        }
    );
}

#[test]
fn describe_names_every_signal_and_its_duration() {
    let t = Thresholds::default();
    let mut tr = Tracker::default();
    let o = obs(MeshState::Down, ReadyState::Unknown, VmState::Off);
    tr.observe("n", o, &t, T0);
    let s = tr.observe("n", o, &t, T0 + 42).clone();
    assert_eq!(
        describe(&s, T0 + 42),
        "mesh=down for 42s, node=unknown for 42s, vm=off for 42s"
    );
}
