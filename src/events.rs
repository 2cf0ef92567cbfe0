//! Lifecycle transitions of pods and containers (created, started,
//! stopped, deleted), in order, for the CRI's `GetContainerEvents`.
//!
//! Transitions are derived by comparing what the runtime holds now with
//! what was last seen, per object, so they are never out of order or
//! duplicated, and steps too quick to observe one by one are filled in (a
//! container seen for the first time already exited yields created,
//! started, stopped). What makes us look:
//! - the runtime marks an object after each change it makes
//!   (`Changes::mark`): create, start, stop, remove, an infra's death;
//! - an inotify watch on each container's directory sees the infra
//!   rewrite `status.json` when the container exits on its own (the infra
//!   stays as it is: single-threaded, no extra channel to the daemon);
//! - a full comparison every `RESYNC`, in case a watch could not be added.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::runtime::{ContainerView, PodView, Runtime};

/// How often everything is compared even without a change noticed.
const RESYNC: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Started => "started",
            EventKind::Stopped => "stopped",
            EventKind::Deleted => "deleted",
        }
    }
}

/// One lifecycle step of a container or of a pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub kind: EventKind,
    /// The container's ID, or the sandbox's for a sandbox.
    pub id: String,
    pub pod_id: String,
    pub sandbox: bool,
    /// When it was noticed (Unix nanoseconds).
    pub at: i64,
}

/// Objects the runtime changed since the last look. Marking is cheap and
/// never blocks on the watcher.
#[derive(Default)]
pub struct Changes {
    pending: Mutex<Pending>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct Pending {
    order: Vec<String>,
    set: HashSet<String>,
    all: bool,
}

impl Changes {
    pub fn new() -> Changes {
        Changes::default()
    }

    /// Something about pod or container `id` changed.
    pub fn mark(&self, id: &str) {
        {
            let mut p = self.pending.lock().expect("changes");
            if p.set.insert(id.to_string()) {
                p.order.push(id.to_string());
            }
        }
        self.wake.notify_one();
    }

    /// Compare everything.
    pub fn mark_all(&self) {
        self.pending.lock().expect("changes").all = true;
        self.wake.notify_one();
    }

    fn take(&self) -> (Vec<String>, bool) {
        let mut p = self.pending.lock().expect("changes");
        p.set.clear();
        (std::mem::take(&mut p.order), std::mem::take(&mut p.all))
    }
}

/// How far an object has come in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phase {
    pub started: bool,
    pub stopped: bool,
}

/// The steps from `old` to `new` (`None`: the object does not exist).
pub fn steps(old: Option<Phase>, new: Option<Phase>) -> Vec<EventKind> {
    let forward = |o: Phase, n: Phase, v: &mut Vec<EventKind>| {
        if n.started && !o.started {
            v.push(EventKind::Started);
        }
        if n.stopped && !o.stopped {
            v.push(EventKind::Stopped);
        }
    };
    let mut v = Vec::new();
    match (old, new) {
        (None, None) => {}
        (None, Some(n)) => {
            v.push(EventKind::Created);
            forward(Phase::default(), n, &mut v);
        }
        (Some(o), Some(n)) => forward(o, n, &mut v),
        (Some(o), None) => {
            // Removed while running: it stopped first.
            if o.started && !o.stopped {
                v.push(EventKind::Stopped);
            }
            v.push(EventKind::Deleted);
        }
    }
    v
}

fn pod_phase(p: &PodView) -> Phase {
    Phase {
        started: true,
        stopped: !p.ready,
    }
}

fn container_phase(c: &ContainerView) -> Phase {
    Phase {
        started: c.status.started_at != 0,
        stopped: c.status.exit_code.is_some(),
    }
}

#[derive(Debug, Clone)]
struct Known {
    phase: Phase,
    pod_id: String,
    sandbox: bool,
}

enum Current {
    Pod(Box<PodView>),
    Container(Box<ContainerView>),
}

/// What was last seen of every object, and the inotify watches on
/// container directories.
pub struct Tracker {
    known: HashMap<String, Known>,
    inotify: Option<RawFd>,
    watches: HashMap<String, i32>,
    by_wd: HashMap<i32, String>,
}

impl Tracker {
    fn new(inotify: Option<RawFd>) -> Tracker {
        Tracker {
            known: HashMap::new(),
            inotify,
            watches: HashMap::new(),
            by_wd: HashMap::new(),
        }
    }

    /// Take the present as the starting point: no transitions for what
    /// already exists.
    fn seed(&mut self, rt: &Runtime) {
        for p in rt.pods() {
            self.known.insert(
                p.record.id.clone(),
                Known {
                    phase: pod_phase(&p),
                    pod_id: p.record.id.clone(),
                    sandbox: true,
                },
            );
        }
        for c in rt.containers() {
            self.watch(rt, &c.record.id);
            // Read again: it may have exited before the watch was in place.
            let c = rt.container(&c.record.id).unwrap_or(c);
            self.known.insert(
                c.record.id.clone(),
                Known {
                    phase: container_phase(&c),
                    pod_id: c.record.pod_id.clone(),
                    sandbox: false,
                },
            );
        }
    }

    fn current(rt: &Runtime, id: &str) -> Option<Current> {
        if let Ok(p) = rt.pod(id) {
            return Some(Current::Pod(Box::new(p)));
        }
        rt.container(id).ok().map(|c| Current::Container(Box::new(c)))
    }

    /// Compare `ids` (or everything) with what was seen; append the steps.
    fn process(&mut self, rt: &Runtime, ids: Vec<String>, all: bool, out: &mut Vec<Transition>) {
        let ids = if all {
            let mut pods = rt.pods();
            pods.sort_by_key(|p| p.record.created_at);
            let mut ctrs = rt.containers();
            ctrs.sort_by_key(|c| c.record.created_at);
            let mut v: Vec<String> = pods.iter().map(|p| p.record.id.clone()).collect();
            v.extend(ctrs.iter().map(|c| c.record.id.clone()));
            let present: HashSet<String> = v.iter().cloned().collect();
            // Gone containers before gone pods.
            let mut gone: Vec<(&String, &Known)> = self.known.iter().filter(|(k, _)| !present.contains(*k)).collect();
            gone.sort_by_key(|(_, k)| k.sandbox);
            v.extend(gone.into_iter().map(|(k, _)| k.clone()));
            v.extend(ids);
            v
        } else {
            ids
        };
        let mut done = HashSet::new();
        for id in ids {
            self.visit(rt, &id, &mut done, out);
        }
    }

    fn visit(&mut self, rt: &Runtime, id: &str, done: &mut HashSet<String>, out: &mut Vec<Transition>) {
        if !done.insert(id.to_string()) {
            return;
        }
        let mut current = Self::current(rt, id);
        let old = self.known.get(id).cloned();
        match &current {
            Some(Current::Container(c)) => {
                // A pod's creation comes before its containers'.
                if !self.known.contains_key(&c.record.pod_id) {
                    let pod = c.record.pod_id.clone();
                    self.visit(rt, &pod, done, out);
                }
                if old.is_none() {
                    self.watch(rt, id);
                    // Read again now that the watch is in place, so an exit
                    // in between is not missed.
                    current = Self::current(rt, id);
                }
            }
            None if old.as_ref().is_some_and(|k| k.sandbox) => {
                // A pod's containers go before it.
                let children: Vec<String> = self
                    .known
                    .iter()
                    .filter(|(_, k)| !k.sandbox && k.pod_id == id)
                    .map(|(c, _)| c.clone())
                    .collect();
                for c in children {
                    self.visit(rt, &c, done, out);
                }
            }
            _ => {}
        }
        let (new, pod_id, sandbox) = match &current {
            Some(Current::Pod(p)) => (Some(pod_phase(p)), p.record.id.clone(), true),
            Some(Current::Container(c)) => (Some(container_phase(c)), c.record.pod_id.clone(), false),
            None => match &old {
                Some(k) => (None, k.pod_id.clone(), k.sandbox),
                None => return,
            },
        };
        let at = crate::unix_nanos();
        for kind in steps(old.as_ref().map(|k| k.phase), new) {
            out.push(Transition {
                kind,
                id: id.to_string(),
                pod_id: pod_id.clone(),
                sandbox,
                at,
            });
        }
        match new {
            Some(phase) => {
                self.known.insert(id.to_string(), Known { phase, pod_id, sandbox });
            }
            None => {
                self.known.remove(id);
                self.unwatch(id);
            }
        }
    }

    /// Watch a container's directory for the infra's `status.json` writes
    /// (temporary file + rename: IN_MOVED_TO).
    fn watch(&mut self, rt: &Runtime, id: &str) {
        let Some(fd) = self.inotify else { return };
        if self.watches.contains_key(id) {
            return;
        }
        let dir = rt.container_dir(id);
        let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
            return;
        };
        // SAFETY: `fd` is our open inotify descriptor (the watcher task
        // owns it and outlives this call); `path` is NUL-terminated.
        let wd = unsafe {
            libc::inotify_add_watch(
                fd,
                path.as_ptr(),
                libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE | libc::IN_ONLYDIR,
            )
        };
        if wd < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::warn!(container = %id, "cannot watch {}: {e}; its exit will be noticed within {RESYNC:?}", dir.display());
            }
            return;
        }
        self.watches.insert(id.to_string(), wd);
        self.by_wd.insert(wd, id.to_string());
    }

    fn unwatch(&mut self, id: &str) {
        if let (Some(wd), Some(fd)) = (self.watches.remove(id), self.inotify) {
            self.by_wd.remove(&wd);
            // SAFETY: removing a watch from our inotify descriptor; EINVAL
            // (already gone with its directory) is harmless.
            unsafe { libc::inotify_rm_watch(fd, wd) };
        }
    }

    /// A watch the kernel dropped (its directory was deleted).
    fn forget_wd(&mut self, wd: i32) {
        if let Some(id) = self.by_wd.remove(&wd) {
            self.watches.remove(&id);
        }
    }
}

/// The inotify descriptor, non-blocking, for `AsyncFd`.
struct Inotify(OwnedFd);

impl AsRawFd for Inotify {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

fn inotify() -> std::io::Result<Inotify> {
    // SAFETY: inotify_init1 takes flags and returns a new descriptor or -1.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and nothing else owns it.
    Ok(Inotify(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// What one read of the inotify descriptor said.
#[derive(Debug, Default, PartialEq, Eq)]
struct InotifyBatch {
    /// Watches whose `status.json` was replaced.
    changed: Vec<i32>,
    /// Watches the kernel dropped.
    dropped: Vec<i32>,
    overflow: bool,
}

/// Parse `struct inotify_event` records: wd, mask, cookie, len, name.
fn parse_inotify(buf: &[u8], out: &mut InotifyBatch) {
    const HEADER: usize = 16;
    let mut off = 0;
    while off + HEADER <= buf.len() {
        let word = |i: usize| u32::from_ne_bytes(buf[off + i..off + i + 4].try_into().expect("4 bytes"));
        let (wd, mask, len) = (word(0) as i32, word(4), word(12) as usize);
        let name_end = (off + HEADER + len).min(buf.len());
        let name = &buf[off + HEADER..name_end];
        let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
        if mask & libc::IN_Q_OVERFLOW != 0 {
            out.overflow = true;
        } else if mask & libc::IN_IGNORED != 0 {
            out.dropped.push(wd);
        } else if name == b"status.json" {
            out.changed.push(wd);
        }
        off += HEADER + len;
    }
}

/// Receives each batch of transitions, in order, on a blocking thread
/// (building what subscribers get may read files).
pub type Sink = Box<dyn FnMut(&Runtime, Vec<Transition>) + Send>;

/// Start watching: seed with the present (synchronously, so nothing made
/// after this returns is missed), then hand every later batch of
/// transitions to `sink`.
pub fn start(rt: Arc<Runtime>, sink: Sink) {
    let inotify = match inotify() {
        Ok(i) => Some(i),
        Err(e) => {
            tracing::warn!("inotify unavailable ({e}); container exits are noticed within {RESYNC:?}");
            None
        }
    };
    let mut tracker = Tracker::new(inotify.as_ref().map(|i| i.as_raw_fd()));
    tracker.seed(&rt);
    tokio::spawn(run(rt, tracker, sink, inotify));
}

async fn run(rt: Arc<Runtime>, mut tracker: Tracker, mut sink: Sink, inotify: Option<Inotify>) {
    // SAFETY: the AsyncFd owns the Inotify and with it the descriptor,
    // which stays open and the same for the AsyncFd's whole life.
    let afd = inotify.and_then(|i| unsafe { tokio::io::unix::AsyncFd::register(i) }.ok());
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut batch = InotifyBatch::default();
        tokio::select! {
            () = rt.changes.wake.notified() => {}
            _ = resync.tick() => rt.changes.mark_all(),
            ready = async {
                match &afd {
                    Some(a) => a.readable().await,
                    None => std::future::pending().await,
                }
            } => {
                if let (Ok(mut guard), Some(a)) = (ready, &afd) {
                    loop {
                        // SAFETY: reading into our own buffer from our
                        // non-blocking inotify descriptor.
                        let n = unsafe { libc::read(a.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                        if n <= 0 {
                            guard.clear_ready();
                            break;
                        }
                        parse_inotify(&buf[..n as usize], &mut batch);
                    }
                }
            }
        }
        for wd in &batch.changed {
            if let Some(id) = tracker.by_wd.get(wd) {
                rt.changes.mark(id);
            }
        }
        if batch.overflow {
            rt.changes.mark_all();
        }
        for wd in batch.dropped {
            tracker.forget_wd(wd);
        }
        let (ids, all) = rt.changes.take();
        if ids.is_empty() && !all {
            continue;
        }
        let rt2 = Arc::clone(&rt);
        let result = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            tracker.process(&rt2, ids, all, &mut out);
            if !out.is_empty() {
                sink(&rt2, out);
            }
            (tracker, sink)
        })
        .await;
        match result {
            Ok((t, s)) => {
                tracker = t;
                sink = s;
            }
            Err(e) => {
                tracing::error!("the event watcher failed: {e}; container events stop");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EventKind::*;

    const NEW: Phase = Phase {
        started: false,
        stopped: false,
    };
    const RUNNING: Phase = Phase {
        started: true,
        stopped: false,
    };
    const EXITED: Phase = Phase {
        started: true,
        stopped: true,
    };
    const START_FAILED: Phase = Phase {
        started: false,
        stopped: true,
    };

    #[test]
    fn steps_fill_in_what_was_not_seen() {
        assert_eq!(steps(None, Some(NEW)), [Created]);
        assert_eq!(steps(None, Some(EXITED)), [Created, Started, Stopped]);
        assert_eq!(steps(Some(NEW), Some(RUNNING)), [Started]);
        assert_eq!(steps(Some(RUNNING), Some(EXITED)), [Stopped]);
        assert_eq!(steps(Some(NEW), Some(EXITED)), [Started, Stopped]);
        assert_eq!(steps(Some(NEW), Some(START_FAILED)), [Stopped]);
        assert_eq!(steps(Some(RUNNING), None), [Stopped, Deleted]);
        assert_eq!(steps(Some(EXITED), None), [Deleted]);
        assert_eq!(steps(Some(NEW), None), [Deleted]);
        assert!(steps(Some(RUNNING), Some(RUNNING)).is_empty());
        assert!(steps(None, None).is_empty());
    }

    #[test]
    fn changes_coalesce_in_order() {
        let c = Changes::new();
        c.mark("a");
        c.mark("b");
        c.mark("a");
        assert_eq!(c.take(), (vec!["a".to_string(), "b".to_string()], false));
        c.mark_all();
        assert_eq!(c.take(), (Vec::new(), true));
        assert_eq!(c.take(), (Vec::new(), false));
    }

    #[test]
    fn inotify_records() {
        let mut buf = Vec::new();
        let mut record = |wd: i32, mask: u32, name: &[u8]| {
            let len = if name.is_empty() {
                0
            } else {
                (name.len() + 1).div_ceil(16) * 16
            };
            buf.extend_from_slice(&wd.to_ne_bytes());
            buf.extend_from_slice(&mask.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&(len as u32).to_ne_bytes());
            let mut n = name.to_vec();
            n.resize(len, 0);
            buf.extend_from_slice(&n);
        };
        record(3, libc::IN_MOVED_TO, b"status.json");
        record(4, libc::IN_CLOSE_WRITE, b".status.json.tmp");
        record(5, libc::IN_IGNORED, b"");
        record(-1, libc::IN_Q_OVERFLOW, b"");
        let mut out = InotifyBatch::default();
        parse_inotify(&buf, &mut out);
        assert_eq!(
            out,
            InotifyBatch {
                changed: vec![3],
                dropped: vec![5],
                overflow: true
            }
        );
    }
}
