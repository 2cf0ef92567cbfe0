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

use std::collections::{BTreeMap, HashMap};
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

/// The last statuses seen of a pod and its containers, for events about
/// objects already gone (a kubelet needs the pod's metadata even in a
/// deletion event).
#[derive(Default)]
struct Snapshot {
    pod: Option<cri::PodSandboxStatus>,
    containers: BTreeMap<String, cri::ContainerStatus>,
}

impl Feed {
    /// Start following the runtime.
    pub fn start(rt: &Arc<Runtime>) -> Arc<Feed> {
        let (tx, _) = broadcast::channel(BUFFER);
        let feed = Arc::new(Feed { tx: tx.clone() });
        let mut snapshots: HashMap<String, Snapshot> = HashMap::new();
        crate::events::start(
            Arc::clone(rt),
            Box::new(move |rt: &Runtime, batch: Vec<Transition>| {
                for t in batch {
                    let ev = build(rt, &mut snapshots, &t);
                    crate::metrics::container_event(t.kind.as_str());
                    tracing::debug!(id = %t.id, pod = %t.pod_id, sandbox = t.sandbox, kind = t.kind.as_str(), "container event");
                    // No subscriber is not an error.
                    let _ = tx.send(Arc::new(ev));
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

/// The CRI event for one transition, with the pod's statuses as they are
/// now (or as last seen, for what is gone).
fn build(rt: &Runtime, snapshots: &mut HashMap<String, Snapshot>, t: &Transition) -> cri::ContainerEventResponse {
    let snap = snapshots.entry(t.pod_id.clone()).or_default();
    if let Ok(s) = super::sandbox::status(
        rt,
        cri::PodSandboxStatusRequest {
            pod_sandbox_id: t.pod_id.clone(),
            verbose: false,
        },
    ) {
        snap.pod = s.status;
    }
    let mut live: Vec<String> = rt.pod_containers(&t.pod_id).into_iter().map(|c| c.id).collect();
    live.sort();
    snap.containers.retain(|id, _| live.contains(id) || *id == t.id);
    for id in live {
        if let Ok(s) = super::container::status(
            rt,
            cri::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            },
        ) {
            if let Some(s) = s.status {
                snap.containers.insert(id, s);
            }
        }
    }
    // A deleted container is no longer among its pod's containers.
    let gone = (t.kind == EventKind::Deleted).then_some(t.id.as_str());
    let mut containers: Vec<cri::ContainerStatus> = snap
        .containers
        .values()
        .filter(|c| Some(c.id.as_str()) != gone)
        .cloned()
        .collect();
    containers.sort_by_key(|c| c.created_at);
    let ev = cri::ContainerEventResponse {
        container_id: t.id.clone(),
        container_event_type: event_type(t.kind) as i32,
        created_at: t.at,
        pod_sandbox_status: snap.pod.clone(),
        containers_statuses: containers,
    };
    if t.kind == EventKind::Deleted {
        if t.sandbox {
            snapshots.remove(&t.pod_id);
        } else {
            snap.containers.remove(&t.id);
        }
    }
    ev
}
