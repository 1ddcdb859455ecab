//! GetContainerEvents against a real berthd: every lifecycle change of a
//! pod and its container reaches a subscriber, in order, each with the
//! pod's status and its containers' statuses as they were; an exit is
//! published within moments of happening.

use berth_protocol::cri::*;
use berth_tests::node::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The next event, within 10 s.
async fn next(events: &mut tonic::Streaming<ContainerEventResponse>) -> ContainerEventResponse {
    tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("an event within 10 s")
        .expect("the stream")
        .expect("an event, not the end")
}

fn unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[tokio::test]
async fn a_pod_and_its_container_are_followed_through_their_events() {
    let n = Node::running("ev", "").await;
    let mut rt = n.d.runtime().await;
    let mut events = rt
        .get_container_events(GetEventsRequest {})
        .await
        .expect("GetContainerEvents")
        .into_inner();
    let pod = run_pod(&mut rt, pod_config("events", &n.logs()))
        .await
        .expect("RunPodSandbox");
    let ctr = create_container(
        &mut rt,
        &pod,
        container_config("quick", &n.image, &["sh", "-c", "sleep 0.5; exit 3"]),
    )
    .await
    .expect("CreateContainer");
    start_container(&mut rt, &ctr)
        .await
        .expect("StartContainer");

    use ContainerEventType::*;
    let mut seen = Vec::new();
    let mut exit_latency = None;
    for _ in 0..5 {
        let e = next(&mut events).await;
        if e.container_id == ctr && e.container_event_type == ContainerStoppedEvent as i32 {
            let received = unix_nanos();
            let me = e
                .containers_statuses
                .iter()
                .find(|c| c.id == ctr)
                .expect("the container among its pod's");
            assert_eq!(
                (me.state, me.exit_code),
                (ContainerState::ContainerExited as i32, 3),
                "{me:?}"
            );
            exit_latency = Some(Duration::from_nanos((received - me.finished_at) as u64));
        }
        seen.push(e);
    }
    remove_container(&mut rt, &ctr)
        .await
        .expect("RemoveContainer");
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("StopPodSandbox");
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("RemovePodSandbox");
    for _ in 0..3 {
        seen.push(next(&mut events).await);
    }

    let got: Vec<(String, i32)> = seen
        .iter()
        .map(|e| (e.container_id.clone(), e.container_event_type))
        .collect();
    let want: Vec<(String, i32)> = [
        (&pod, ContainerCreatedEvent),
        (&pod, ContainerStartedEvent),
        (&ctr, ContainerCreatedEvent),
        (&ctr, ContainerStartedEvent),
        (&ctr, ContainerStoppedEvent),
        (&ctr, ContainerDeletedEvent),
        (&pod, ContainerStoppedEvent),
        (&pod, ContainerDeletedEvent),
    ]
    .iter()
    .map(|(id, t)| (id.to_string(), *t as i32))
    .collect();
    assert_eq!(got, want);
    // Each carries its pod, as kubelet needs it (the pod's UID).
    for e in &seen {
        let p = e.pod_sandbox_status.as_ref().expect("the pod's status");
        assert_eq!(p.id, pod);
        assert_eq!(p.metadata.as_ref().map(|m| m.name.as_str()), Some("events"));
        assert!(e.created_at > 0);
    }
    // The container's own events list it as it then was; once deleted,
    // it is no longer among its pod's.
    let state_of = |i: usize| {
        seen[i]
            .containers_statuses
            .iter()
            .find(|c| c.id == ctr)
            .map(|c| c.state)
    };
    assert_eq!(state_of(2), Some(ContainerState::ContainerCreated as i32));
    assert_eq!(state_of(3), Some(ContainerState::ContainerRunning as i32));
    assert_eq!(state_of(5), None);
    assert_eq!(
        seen[6].pod_sandbox_status.as_ref().map(|p| p.state),
        Some(PodSandboxState::SandboxNotready as i32)
    );
    let latency = exit_latency.expect("the exit was seen");
    eprintln!("exit to event: {latency:?}");
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    n.assert_consistent();
}

#[tokio::test]
async fn every_subscriber_gets_every_event_and_a_gone_one_costs_nothing() {
    let n = Node::running("es", "").await;
    let mut rt = n.d.runtime().await;
    let mut first = rt
        .get_container_events(GetEventsRequest {})
        .await
        .expect("subscribe")
        .into_inner();
    let second = rt
        .get_container_events(GetEventsRequest {})
        .await
        .expect("subscribe")
        .into_inner();
    drop(second);
    let mut third = rt
        .get_container_events(GetEventsRequest {})
        .await
        .expect("subscribe")
        .into_inner();
    let pod = run_pod(&mut rt, pod_config("subscribers", &n.logs()))
        .await
        .expect("RunPodSandbox");
    for events in [&mut first, &mut third] {
        let e = next(events).await;
        assert_eq!(
            (e.container_id.as_str(), e.container_event_type),
            (
                pod.as_str(),
                ContainerEventType::ContainerCreatedEvent as i32
            )
        );
    }
    remove_pod(&mut rt, &pod).await.expect("remove");
    n.assert_consistent();
}
