//! The simulation's scheduler, clock, ids and fault decisions, all from one seed.
//!
//! Tasks are futures polled by hand with a no-op waker. A component operation begins
//! with [`point`], which returns `Pending` once: the task is then suspended at a step
//! boundary and the scheduler picks, by the seed, what happens next anywhere in the
//! system. A task that is pending for another reason (a channel inside the extraction
//! pipeline) is polled again at once: its own concurrency is not a boundary. No threads,
//! no real time: the same seed gives the same schedule.

use crate::clock::{Clock, Ids};
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// splitmix64: small, fast, and the same on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / ((1u64 << 53) as f64) < p
    }
}

/// Fault rates of a schedule.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Per component operation: fail with a transient error before it takes effect.
    pub error_before: f64,
    /// Per component operation: take effect, then report a transient error (a lost
    /// answer).
    pub error_after: f64,
}

/// When an injected fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strike {
    Before,
    After,
}

/// What every component reads: the time, the running task's process, the dead
/// processes, the fault dice.
pub struct SimState {
    pub now_ms: u64,
    pub rng: Rng,
    pub faults: Faults,
    /// The process of the task being polled (`None` outside the scheduler: then yield
    /// points do nothing and no fault is injected).
    pub current: Option<u64>,
    pub dead: BTreeSet<u64>,
    yielded: bool,
    /// The operation the task that yielded last is about to issue (see [`point_for`]).
    pending: &'static str,
    /// How long the task that yielded last waits before it runs again (see [`sleep`]);
    /// 0: the scheduler's usual short pause.
    pub sleep_ms: u64,
    /// The operations of the schedule, for the report of a failing seed: the first
    /// [`TRACE_HALF`], then the last [`TRACE_HALF`] (`trace_end`).
    trace: Vec<String>,
    trace_end: std::collections::VecDeque<String>,
    trace_omitted: u64,
}

/// Lines of a trace kept from its start, and from its end.
const TRACE_HALF: usize = 10_000;

/// The shared state.
pub type Sim = Arc<Mutex<SimState>>;

impl SimState {
    pub fn new(seed: u64) -> Sim {
        Arc::new(Mutex::new(SimState {
            now_ms: 1_000_000,
            rng: Rng::new(seed),
            faults: Faults::default(),
            current: None,
            dead: BTreeSet::new(),
            yielded: false,
            pending: "",
            sleep_ms: 0,
            trace: Vec::new(),
            trace_end: Default::default(),
            trace_omitted: 0,
        }))
    }

    /// Decide whether this operation fails, and when.
    pub fn strike(&mut self) -> Option<Strike> {
        self.current?;
        let f = self.faults;
        if self.rng.chance(f.error_before) {
            Some(Strike::Before)
        } else if self.rng.chance(f.error_after) {
            Some(Strike::After)
        } else {
            None
        }
    }

    /// Whether `process` has crashed.
    pub fn is_dead(&self, process: u64) -> bool {
        self.dead.contains(&process)
    }

    /// Record a step. The trace keeps its first and its last [`TRACE_HALF`] lines: a
    /// schedule that fails late (a run that never settles) shows its end.
    pub fn note(&mut self, what: impl Into<String>) {
        let p = self.current.map(|p| p.to_string()).unwrap_or("-".into());
        let line = format!("{:>9} p{p:<3} {}", self.now_ms, what.into());
        if self.trace.len() < TRACE_HALF {
            self.trace.push(line);
            return;
        }
        if self.trace_end.len() == TRACE_HALF {
            self.trace_end.pop_front();
            self.trace_omitted += 1;
        }
        self.trace_end.push_back(line);
    }

    /// The last `n` lines of the trace (with a line saying how many were left out).
    pub fn trace_tail(&self, n: usize) -> String {
        let mut all: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        let omitted = format!("… {} steps omitted …", self.trace_omitted);
        if self.trace_omitted > 0 {
            all.push(&omitted);
        }
        all.extend(self.trace_end.iter().map(String::as_str));
        all[all.len().saturating_sub(n)..].join("\n")
    }
}

/// A step boundary: the running task pauses here and the scheduler chooses what runs
/// next. Outside the scheduler it returns at once.
pub fn point(sim: &Sim) -> Point {
    point_for(sim, "")
}

/// A step boundary before issuing the operation `kind`. A task paused at the boundary
/// before a `swap` is past its last clock check: the protocol assumes a statement it
/// decided to issue reaches the warehouse promptly (the swap claim's lease rests on
/// it), so the scheduler never stalls it there; everywhere else it may stall for long.
pub fn point_for(sim: &Sim, kind: &'static str) -> Point {
    Point {
        sim: sim.clone(),
        done: false,
        kind,
        sleep_ms: 0,
    }
}

/// A step boundary after which the task waits `ms` of simulated time (a statement
/// waiting for a lock). Outside the scheduler it returns at once.
pub fn sleep(sim: &Sim, ms: u64) -> Point {
    Point {
        sim: sim.clone(),
        done: false,
        kind: "",
        sleep_ms: ms,
    }
}

pub struct Point {
    sim: Sim,
    done: bool,
    kind: &'static str,
    sleep_ms: u64,
}

impl Future for Point {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if self.done {
            return Poll::Ready(());
        }
        self.done = true;
        let mut s = self.sim.lock().unwrap();
        if s.current.is_some() {
            s.yielded = true;
            s.pending = self.kind;
            s.sleep_ms = self.sleep_ms;
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

/// One running handler.
pub struct Task {
    pub id: u64,
    pub process: u64,
    /// Not polled before this time (a stalled instance).
    pub wake_at_ms: u64,
    /// The kind of operation it is paused before.
    pub pending: &'static str,
    fut: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// The tasks of a schedule.
#[derive(Default)]
pub struct Executor {
    pub tasks: Vec<Task>,
    next: u64,
}

impl Executor {
    pub fn spawn(&mut self, process: u64, fut: impl Future<Output = ()> + Send + 'static) {
        self.next += 1;
        self.tasks.push(Task {
            id: self.next,
            process,
            wake_at_ms: 0,
            pending: "",
            fut: Box::pin(fut),
        });
    }

    /// Run task `i` up to its next yield point; true when it finished.
    pub fn step(&mut self, sim: &Sim, i: usize) -> bool {
        let process = self.tasks[i].process;
        sim.lock().unwrap().current = Some(process);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut spins = 0u32;
        let finished = loop {
            match self.tasks[i].fut.as_mut().poll(&mut cx) {
                Poll::Ready(()) => break true,
                Poll::Pending => {
                    let mut s = sim.lock().unwrap();
                    if std::mem::take(&mut s.yielded) {
                        self.tasks[i].pending = std::mem::take(&mut s.pending);
                        break false;
                    }
                    drop(s);
                    spins += 1;
                    assert!(
                        spins < 100_000,
                        "a simulated task is pending on something outside the simulation"
                    );
                }
            }
        };
        sim.lock().unwrap().current = None;
        if finished {
            self.tasks.remove(i);
        }
        finished
    }

    /// Kill a process: it is marked dead first, so the drop code of its tasks (a
    /// transaction's rollback on drop) finds it dead and does nothing, as a killed
    /// instance would.
    pub fn crash(&mut self, sim: &Sim, process: u64) {
        {
            let mut s = sim.lock().unwrap();
            s.dead.insert(process);
            s.note(format!("CRASH process {process}"));
        }
        let (dead, alive): (Vec<_>, Vec<_>) = std::mem::take(&mut self.tasks)
            .into_iter()
            .partition(|t| t.process == process);
        self.tasks = alive;
        sim.lock().unwrap().current = Some(process);
        drop(dead);
        sim.lock().unwrap().current = None;
    }
}

/// The simulation's clock.
pub struct SimClock(pub Sim);

impl Clock for SimClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        let ms = self.0.lock().unwrap().now_ms as i64;
        chrono::DateTime::from_timestamp_millis(1_780_000_000_000 + ms).expect("in range")
    }
    fn monotonic(&self) -> Duration {
        Duration::from_millis(self.0.lock().unwrap().now_ms)
    }
}

/// Ids from the seed.
pub struct SimIds(pub Sim);

impl Ids for SimIds {
    fn fresh(&self) -> String {
        format!("{:016x}", self.0.lock().unwrap().rng.next_u64())
    }
}
