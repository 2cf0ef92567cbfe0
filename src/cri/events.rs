//! `GetContainerEvents`: the runtime's lifecycle transitions
//! (`crate::events`) as CRI events, each with its pod's sandbox status and
//! container statuses attached, as containerd sends them to a kubelet's
//! evented PLEG.
//!
//! Events go out through a bounded broadcast ring: publishing never waits
//! for a subscriber. A subscriber that falls more than `BUFFER` events
//! behind gets `RESOURCE_EXHAUSTED` and its stream ends (the kubelet then
//! relists and subscribes again); a client that goes away simply drops its
//! receiver.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_cri::v1 as cri;
use tokio::sync::broadcast;
use tonic::Status;

use crate::events::{EventKind, Transition};
use crate::runtime::Runtime;

/// Events kept for subscribers that have not read them yet.
pub const BUFFER: usize = 1024;

pub type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

pub struct Feed {
    tx: broadcast::Sender<Arc<cri::ContainerEventResponse>>,
}

impl Feed {
    /// Start following the runtime.
    pub fn start(rt: &Arc<Runtime>) -> Arc<Feed> {
        let (tx, _) = broadcast::channel(BUFFER);
        let feed = Arc::new(Feed { tx: tx.clone() });
        // The last status seen of each pod: a kubelet needs the pod's
        // identity even in the event that says it is gone.
        let mut pods: HashMap<String, cri::PodSandboxStatus> = HashMap::new();
        for p in rt.pods() {
            if let Some(st) = pod_status(rt, &p.record.id) {
                pods.insert(p.record.id.clone(), st);
            }
        }
        crate::events::start(
            Arc::clone(rt),
            Box::new(move |rt: &Runtime, batch: Vec<Transition>| {
                for t in batch {
                    crate::metrics::container_event(t.kind.as_str());
                    tracing::debug!(id = %t.id, pod = %t.pod_id, sandbox = t.sandbox, kind = t.kind.as_str(), "container event");
                    // With nobody subscribed only the pods' statuses are
                    // kept up; the rest would be thrown away.
                    let listening = tx.receiver_count() > 0;
                    if let Some(ev) = build(rt, &mut pods, &t, listening) {
                        // Everyone may have gone meanwhile: not an error.
                        let _ = tx.send(Arc::new(ev));
                    }
                }
            }),
        );
        feed
    }

    pub fn subscribe(&self) -> EventStream {
        let rx = self.tx.subscribe();
        crate::metrics::event_subscribers(1);
        struct Counted;
        impl Drop for Counted {
            fn drop(&mut self) {
                crate::metrics::event_subscribers(-1);
            }
        }
        Box::pin(futures::stream::unfold(
            (rx, Counted, false),
            |(mut rx, counted, ended)| async move {
                if ended {
                    return None;
                }
                match rx.recv().await {
                    Ok(ev) => Some((Ok((*ev).clone()), (rx, counted, false))),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        crate::metrics::event_subscriber_dropped();
                        tracing::warn!(
                            missed = n,
                            "a GetContainerEvents client fell behind; closing its stream"
                        );
                        let status = Status::resource_exhausted(format!(
                            "the client fell {n} events behind and was dropped; list again and resubscribe"
                        ));
                        Some((Err(status), (rx, counted, true)))
                    }
                    Err(broadcast::error::RecvError::Closed) => None,
                }
            },
        ))
    }
}

fn event_type(kind: EventKind) -> cri::ContainerEventType {
    match kind {
        EventKind::Created => cri::ContainerEventType::ContainerCreatedEvent,
        EventKind::Started => cri::ContainerEventType::ContainerStartedEvent,
        EventKind::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
        EventKind::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
    }
}

fn pod_status(rt: &Runtime, id: &str) -> Option<cri::PodSandboxStatus> {
    let req = cri::PodSandboxStatusRequest {
        pod_sandbox_id: id.to_string(),
        verbose: false,
    };
    super::sandbox::status(rt, req).ok()?.status
}

/// The CRI event for one transition, with the pod's statuses as they are
/// now (the pod's as last seen once it is gone); None when nobody listens.
fn build(
    rt: &Runtime,
    pods: &mut HashMap<String, cri::PodSandboxStatus>,
    t: &Transition,
    listening: bool,
) -> Option<cri::ContainerEventResponse> {
    if t.sandbox || listening {
        if let Some(st) = pod_status(rt, &t.pod_id) {
            pods.insert(t.pod_id.clone(), st);
        }
    }
    let pod = if t.sandbox && t.kind == EventKind::Deleted {
        pods.remove(&t.pod_id)
    } else {
        pods.get(&t.pod_id).cloned()
    };
    if !listening {
        return None;
    }
    // The pod's containers now; a deleted one is no longer among them.
    let mut containers: Vec<cri::ContainerStatus> = rt
        .pod_containers(&t.pod_id)
        .into_iter()
        .filter(|c| !(t.kind == EventKind::Deleted && c.id == t.id))
        .filter_map(|c| {
            let req = cri::ContainerStatusRequest {
                container_id: c.id,
                verbose: false,
            };
            super::container::status(rt, req).ok()?.status
        })
        .collect();
    containers.sort_by_key(|c| c.created_at);
    Some(cri::ContainerEventResponse {
        container_id: t.id.clone(),
        container_event_type: event_type(t.kind) as i32,
        created_at: t.at,
        pod_sandbox_status: pod,
        containers_statuses: containers,
    })
}
