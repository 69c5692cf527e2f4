//! A linearizability checker for key-value histories: the fault suite's (real
//! processes) and the deterministic simulation's (`sim`).
//!
//! Every operation touches one key, and linearizability is P-compositional (Herlihy &
//! Wing, 1990): a history is linearizable iff each key's sub-history is. So each key is
//! checked alone, as a register that is either absent or holds a value.
//!
//! A key's sub-history is searched with Wing & Gong's algorithm as improved by Lowe
//! (just-in-time linearization) and memoized as in porcupine: the call and return entries
//! sit in one time-ordered doubly-linked list; the search linearizes a pending call whose
//! model step yields the outcome the client saw, lifts it out of the list and pushes it on
//! a stack, and backtracks when the first entry left is a return whose call is not yet
//! linearized. A (linearized set, register value) pair seen before is not searched again,
//! which keeps the search polynomial on the histories tests produce.
//!
//! Leases: a key put with a lease (`Op::PutWithLease`) vanishes when that lease ends
//! (`Op::LeaseEnd`, a revoke or an expiry, with the window in which it took effect). A
//! lease's end touches every key attached to it, so it joins the history of each key that
//! holds a put with that lease: each key is still checked alone, which checks that every
//! key vanished at some point of the window, not that they vanished at one same point
//! (a relaxation: no false violation, fewer caught).
//!
//! Two choices a reader of a verdict should know:
//! - Equal timestamps overlap. A call sorts before a return at the same instant, so either
//!   operation may be linearized first. One operation precedes another only if it returned
//!   strictly before the other was invoked; the clock cannot order an exact tie.
//! - An `Outcome::Unknown` write may take effect at any point after its invoke, or never.
//!   It has a call entry and no return entry, and the search is done once every operation
//!   that returned is linearized (porcupine's return at +infinity is equivalent). An
//!   `Outcome::Unknown` get constrains nothing and is dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// The default number of search states per key before the verdict is `Inconclusive`.
/// A linearizable fault-run history needs about one state per operation. The budget is for
/// the exponential case: many overlapping writes whose order only a later read fixes.
/// Spending all of it took ~45 s and ~0.8 GB in release mode (a state is about
/// `8 * (ops / 64 + 1) + 45` bytes: measured 65 bytes at 40 ops, 76 at 250).
pub const STATES_PER_KEY_DEFAULT: u64 = 10_000_000;

/// At most this many operations are listed in a violation's explanation: a window around
/// the operation whose return the search could not get past.
const EXPLAINED_OPS_MAX: usize = 200;

/// At most this many (last) steps of the longest linearized prefix are listed.
const EXPLAINED_PREFIX_MAX: usize = 50;

/// One operation a client invoked, on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Get {
        key: String,
    },
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// Txn: if the key's value == expected (None: key absent) then put `new`.
    Cas {
        key: String,
        expected: Option<String>,
        new: String,
    },
    /// A put attached to lease `lease`: refused once the lease has ended, and the
    /// key vanishes when it ends (unless written again meanwhile).
    PutWithLease {
        key: String,
        value: String,
        lease: i64,
    },
    /// Lease `lease` ended (revoked or expired) at one point of [invoke, complete];
    /// at most one per lease. Not an operation on one key: it takes effect on
    /// every key whose value is attached to the lease then.
    LeaseEnd {
        lease: i64,
    },
}

/// What the client saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Get(Option<String>),
    Put,
    /// `deleted`: the key existed.
    Delete {
        deleted: bool,
    },
    Cas {
        succeeded: bool,
    },
    /// The lease ended (a `LeaseEnd`'s only outcome).
    LeaseEnded,
    /// Indeterminate: the request may or may not have taken effect (timeout, connection
    /// lost after sending).
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub client: u32,
    pub op: Op,
    /// Nanoseconds on one monotonic clock shared by all clients of the run.
    pub invoke: u64,
    /// None together with Outcome::Unknown.
    pub complete: Option<u64>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// `key`, and a human-readable explanation: the operations of that key in invoke order
    /// (with times and outcomes) and how far the search got (the longest linearized prefix).
    Violation {
        key: String,
        explanation: String,
    },
    /// The search budget ran out for `key` before a verdict.
    Inconclusive {
        key: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Distinct (linearized set, value) states the search of one key may visit.
    pub states_per_key: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            states_per_key: STATES_PER_KEY_DEFAULT,
        }
    }
}

impl Op {
    /// The key the operation touches; None for a lease's end, which touches
    /// every key attached to the lease.
    pub fn key(&self) -> Option<&str> {
        match self {
            Op::Get { key }
            | Op::Put { key, .. }
            | Op::Delete { key }
            | Op::Cas { key, .. }
            | Op::PutWithLease { key, .. } => Some(key),
            Op::LeaseEnd { .. } => None,
        }
    }
}

/// Checks `history` key by key, in key order. The first violating key is reported; failing
/// that, the first key whose search ran out of budget.
///
/// Panics on a malformed event: a completion time present with `Outcome::Unknown` or
/// missing without it, a completion before the invoke, or an outcome of another kind of op.
pub fn check(history: &[Event], budget: Budget) -> Verdict {
    let mut first_inconclusive = None;
    for (key, events) in events_by_key(history) {
        match check_key(&events, budget) {
            KeyVerdict::Linearizable => {}
            KeyVerdict::Violation { explanation } => {
                return Verdict::Violation {
                    key: key.to_owned(),
                    explanation,
                };
            }
            KeyVerdict::Inconclusive => {
                first_inconclusive.get_or_insert(key);
            }
        }
    }
    match first_inconclusive {
        Some(key) => Verdict::Inconclusive { key: key.to_owned() },
        None => Verdict::Linearizable,
    }
}

/// The events that constrain each key; a `BTreeMap` so keys are checked in a fixed order.
/// A lease's end joins the events of every key that holds a put with that lease.
///
/// Panics if a lease ends twice.
fn events_by_key(history: &[Event]) -> BTreeMap<&str, Vec<&Event>> {
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    let mut ends: BTreeMap<i64, &Event> = BTreeMap::new();
    let mut keys_of_lease: BTreeMap<i64, BTreeSet<&str>> = BTreeMap::new();
    for event in history {
        assert_well_formed(event);
        let unknown_get = matches!((&event.op, &event.outcome), (Op::Get { .. }, Outcome::Unknown));
        match &event.op {
            Op::LeaseEnd { lease } => {
                let earlier = ends.insert(*lease, event);
                assert!(earlier.is_none(), "lease {lease} ends once: {event:?}");
            }
            _ if unknown_get => {}
            op => {
                let key = op.key().expect("only a lease's end names no key");
                if let Op::PutWithLease { lease, .. } = op {
                    keys_of_lease.entry(*lease).or_default().insert(key);
                }
                by_key.entry(key).or_default().push(event);
            }
        }
    }
    for (lease, end) in ends {
        for key in keys_of_lease.remove(&lease).unwrap_or_default() {
            by_key.get_mut(key).expect("the key holds a put").push(end);
        }
    }
    by_key
}

fn assert_well_formed(event: &Event) {
    let unknown = event.outcome == Outcome::Unknown;
    assert_eq!(
        event.complete.is_none(),
        unknown,
        "a completion time goes with a known outcome: {event:?}"
    );
    if let Some(complete) = event.complete {
        assert!(complete >= event.invoke, "completed before it was invoked: {event:?}");
    }
    let outcome_fits_op = matches!(
        (&event.op, &event.outcome),
        (_, Outcome::Unknown)
            | (Op::Get { .. }, Outcome::Get(_))
            | (Op::Put { .. }, Outcome::Put)
            | (Op::Delete { .. }, Outcome::Delete { .. })
            | (Op::Cas { .. }, Outcome::Cas { .. })
            | (Op::PutWithLease { .. }, Outcome::Put)
            | (Op::LeaseEnd { .. }, Outcome::LeaseEnded)
    );
    assert!(
        outcome_fits_op,
        "the outcome is of another kind of operation: {event:?}"
    );
    assert!(
        !matches!((&event.op, &event.outcome), (Op::LeaseEnd { .. }, Outcome::Unknown)),
        "a lease's end is in the history only once it is known: {event:?}"
    );
}

enum KeyVerdict {
    Linearizable,
    Violation { explanation: String },
    Inconclusive,
}

fn check_key(events: &[&Event], budget: Budget) -> KeyVerdict {
    let history = KeyHistory::new(events);
    match Search::new(&history, budget.states_per_key).run() {
        SearchEnd::Linearized => KeyVerdict::Linearizable,
        SearchEnd::BudgetSpent => KeyVerdict::Inconclusive,
        SearchEnd::Exhausted(dead_end) => KeyVerdict::Violation {
            explanation: explain(&history, &dead_end),
        },
    }
}

/// Index of a distinct value of one key, so that the model state is a small `Copy` value.
type ValueId = u32;

/// The key's value in the model: None while the key is absent.
type Register = Option<ValueId>;

/// An operation of one key with its observed outcome, values interned; `None` for an
/// outcome field means the outcome is unknown.
#[derive(Clone, Copy)]
enum Step {
    Get {
        seen: Register,
    },
    Put {
        value: ValueId,
    },
    Delete {
        deleted: Option<bool>,
    },
    Cas {
        expected: Register,
        new: ValueId,
        succeeded: Option<bool>,
    },
    /// A put of a value attached to a lease, possible only while `end` (the
    /// operation that ends the lease, if the history has one) is not linearized.
    PutWithLease {
        value: ValueId,
        end: Option<usize>,
    },
    /// The lease ends: a value attached to it vanishes.
    LeaseEnd {
        lease: i64,
    },
}

impl Step {
    /// The register after this step, or None if the step cannot have the observed outcome
    /// when applied to `register`. `lease_of` gives the lease each value is attached to.
    fn apply(self, register: Register, lease_of: &[Option<i64>]) -> Option<Register> {
        match self {
            Step::Get { seen } => (seen == register).then_some(register),
            Step::Put { value } | Step::PutWithLease { value, .. } => Some(Some(value)),
            Step::Delete { deleted } => deleted
                .is_none_or(|deleted| deleted == register.is_some())
                .then_some(None),
            Step::Cas {
                expected,
                new,
                succeeded,
            } => {
                let swaps = register == expected;
                succeeded
                    .is_none_or(|succeeded| succeeded == swaps)
                    .then_some(if swaps { Some(new) } else { register })
            }
            Step::LeaseEnd { lease } => {
                let attached = register.is_some_and(|value| lease_of[value as usize] == Some(lease));
                Some(if attached { None } else { register })
            }
        }
    }
}

/// One key's events in invoke order (an operation's index here is its number `#i` in
/// explanations), with their steps and the values they mention.
struct KeyHistory<'e> {
    events: Vec<&'e Event>,
    steps: Vec<Step>,
    values: Vec<&'e str>,
    /// The lease each value (by id) was put with.
    lease_of: Vec<Option<i64>>,
}

impl<'e> KeyHistory<'e> {
    fn new(events: &[&'e Event]) -> Self {
        let mut events = events.to_vec();
        events.sort_by_key(|event| (event.invoke, event.client));
        let end_of: HashMap<i64, usize> = events
            .iter()
            .enumerate()
            .filter_map(|(op, event)| match event.op {
                Op::LeaseEnd { lease } => Some((lease, op)),
                _ => None,
            })
            .collect();
        let mut interner = Interner::default();
        let steps = events.iter().map(|event| interner.step(event, &end_of)).collect();
        let mut lease_of = vec![None; interner.values.len()];
        for (value, lease) in interner.leases {
            lease_of[value as usize] = Some(lease);
        }
        KeyHistory {
            events,
            steps,
            values: interner.values,
            lease_of,
        }
    }

    fn apply(&self, op: usize, register: Register) -> Option<Register> {
        self.steps[op].apply(register, &self.lease_of)
    }

    fn is_completed(&self, op: usize) -> bool {
        self.events[op].complete.is_some()
    }

    fn completed_count(&self) -> usize {
        self.events.iter().filter(|event| event.complete.is_some()).count()
    }

    fn describe_register(&self, register: Register) -> String {
        match register {
            Some(id) => format!("{:?}", self.values[id as usize]),
            None => "absent".to_owned(),
        }
    }
}

#[derive(Default)]
struct Interner<'e> {
    ids: HashMap<&'e str, ValueId>,
    values: Vec<&'e str>,
    /// The lease of each value put with one.
    leases: Vec<(ValueId, i64)>,
}

impl<'e> Interner<'e> {
    fn id(&mut self, value: &'e str) -> ValueId {
        *self.ids.entry(value).or_insert_with(|| {
            self.values.push(value);
            ValueId::try_from(self.values.len() - 1).expect("fewer than 2^32 values per key")
        })
    }

    fn register(&mut self, value: Option<&'e String>) -> Register {
        value.map(|value| self.id(value))
    }

    fn step(&mut self, event: &'e Event, end_of: &HashMap<i64, usize>) -> Step {
        match (&event.op, &event.outcome) {
            (Op::Get { .. }, Outcome::Get(seen)) => Step::Get {
                seen: self.register(seen.as_ref()),
            },
            (Op::Put { value, .. }, _) => Step::Put { value: self.id(value) },
            (Op::PutWithLease { value, lease, .. }, _) => {
                let value = self.id(value);
                self.leases.push((value, *lease));
                Step::PutWithLease {
                    value,
                    end: end_of.get(lease).copied(),
                }
            }
            (Op::LeaseEnd { lease }, _) => Step::LeaseEnd { lease: *lease },
            (Op::Delete { .. }, Outcome::Delete { deleted }) => Step::Delete {
                deleted: Some(*deleted),
            },
            (Op::Delete { .. }, _) => Step::Delete { deleted: None },
            (Op::Cas { expected, new, .. }, outcome) => Step::Cas {
                expected: self.register(expected.as_ref()),
                new: self.id(new),
                succeeded: match outcome {
                    Outcome::Cas { succeeded } => Some(*succeeded),
                    _ => None,
                },
            },
            (Op::Get { .. }, _) => unreachable!("unknown gets are dropped, others checked: {event:?}"),
        }
    }
}

/// Entries 0 and 1 of the list are its head and tail sentinels.
const HEAD: usize = 0;
const TAIL: usize = 1;

/// The variant order is the sort order at equal times: calls before returns, so that a
/// call and a return at the same instant overlap.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum EntryKind {
    Head,
    Call(usize),
    Return(usize),
    Tail,
}

#[derive(Clone, Copy)]
struct Entry {
    kind: EntryKind,
    prev: usize,
    next: usize,
}

/// The call and return entries of one key in time order, as a doubly-linked list in a
/// `Vec`. A removed entry keeps its links, so removals undone in reverse order restore the
/// list exactly ("dancing links"); the search lifts and unlifts in stack order.
struct EntryList {
    entries: Vec<Entry>,
    call_of: Vec<usize>,
    return_of: Vec<Option<usize>>,
}

impl EntryList {
    fn new(events: &[&Event]) -> Self {
        let mut points: Vec<(u64, EntryKind)> = Vec::with_capacity(2 * events.len());
        for (op, event) in events.iter().enumerate() {
            points.push((event.invoke, EntryKind::Call(op)));
            if let Some(complete) = event.complete {
                points.push((complete, EntryKind::Return(op)));
            }
        }
        points.sort_unstable();
        let sentinel = |kind| Entry {
            kind,
            prev: HEAD,
            next: TAIL,
        };
        let mut list = EntryList {
            entries: vec![sentinel(EntryKind::Head), sentinel(EntryKind::Tail)],
            call_of: vec![usize::MAX; events.len()],
            return_of: vec![None; events.len()],
        };
        for (_, kind) in points {
            list.push_back(kind);
        }
        list
    }

    fn push_back(&mut self, kind: EntryKind) {
        let index = self.entries.len();
        let prev = self.entries[TAIL].prev;
        self.entries.push(Entry { kind, prev, next: TAIL });
        self.entries[prev].next = index;
        self.entries[TAIL].prev = index;
        match kind {
            EntryKind::Call(op) => self.call_of[op] = index,
            EntryKind::Return(op) => self.return_of[op] = Some(index),
            EntryKind::Head | EntryKind::Tail => unreachable!("sentinels are made once"),
        }
    }

    fn first(&self) -> usize {
        self.entries[HEAD].next
    }

    fn next(&self, index: usize) -> usize {
        self.entries[index].next
    }

    fn kind(&self, index: usize) -> EntryKind {
        self.entries[index].kind
    }

    /// Removes the operation's call entry and its return entry, if it has one.
    fn lift(&mut self, op: usize) {
        self.unlink(self.call_of[op]);
        if let Some(ret) = self.return_of[op] {
            self.unlink(ret);
        }
    }

    /// Undoes `lift(op)`, which must be the last lift not yet undone.
    fn unlift(&mut self, op: usize) {
        if let Some(ret) = self.return_of[op] {
            self.relink(ret);
        }
        self.relink(self.call_of[op]);
    }

    fn unlink(&mut self, index: usize) {
        let Entry { prev, next, .. } = self.entries[index];
        assert_eq!(self.entries[prev].next, index, "unlinking an entry that is in the list");
        self.entries[prev].next = next;
        self.entries[next].prev = prev;
    }

    fn relink(&mut self, index: usize) {
        let Entry { prev, next, .. } = self.entries[index];
        assert_eq!(self.entries[prev].next, next, "relinking into the gap the entry left");
        self.entries[prev].next = index;
        self.entries[next].prev = index;
    }
}

/// Where the search is: the set of linearized operations (a bitset) followed by one word
/// for the register, so that the words are themselves the memo key.
struct SearchState {
    words: Vec<u64>,
}

impl SearchState {
    fn new(ops: usize) -> Self {
        SearchState {
            words: vec![0; ops.div_ceil(64) + 1],
        }
    }

    fn is_linearized(&self, op: usize) -> bool {
        self.words[op / 64] & (1 << (op % 64)) != 0
    }

    fn set_linearized(&mut self, op: usize, linearized: bool) {
        assert_ne!(self.is_linearized(op), linearized, "op {op} changes state");
        self.words[op / 64] ^= 1 << (op % 64);
    }

    /// The register's word: 0 while absent, else the value's id plus one.
    fn register(&self) -> Register {
        let word = *self.words.last().expect("the register word");
        word.checked_sub(1).map(|id| id as ValueId)
    }

    fn set_register(&mut self, register: Register) {
        *self.words.last_mut().expect("the register word") = register.map_or(0, |id| u64::from(id) + 1);
    }

    fn key(&self) -> &[u64] {
        &self.words
    }
}

struct Frame {
    op: usize,
    register_before: Register,
}

/// The deepest point the search reached before it had to backtrack.
struct DeadEnd {
    /// Linearized operations, in linearization order.
    prefix: Vec<usize>,
    register: Register,
    /// The operation whose return came next, with no way left to linearize it first.
    blocked_by: usize,
}

enum SearchEnd {
    Linearized,
    Exhausted(DeadEnd),
    BudgetSpent,
}

struct Search<'h> {
    history: &'h KeyHistory<'h>,
    list: EntryList,
    state: SearchState,
    stack: Vec<Frame>,
    /// Every state visited; its size is what the budget limits.
    seen: HashSet<Box<[u64]>>,
    states_max: u64,
    completed_pending: usize,
    deepest: Option<DeadEnd>,
}

impl<'h> Search<'h> {
    fn new(history: &'h KeyHistory<'h>, states_max: u64) -> Self {
        Search {
            history,
            list: EntryList::new(&history.events),
            state: SearchState::new(history.events.len()),
            stack: Vec::new(),
            seen: HashSet::new(),
            states_max,
            completed_pending: history.completed_count(),
            deepest: None,
        }
    }

    fn run(mut self) -> SearchEnd {
        let mut cursor = self.list.first();
        while self.completed_pending > 0 {
            cursor = match self.list.kind(cursor) {
                EntryKind::Call(op) if self.try_linearize(op) => {
                    if self.seen.len() as u64 > self.states_max {
                        return SearchEnd::BudgetSpent;
                    }
                    self.list.first()
                }
                EntryKind::Call(_) => self.list.next(cursor),
                EntryKind::Return(op) => {
                    self.note_dead_end(op);
                    match self.backtrack() {
                        Some(op) => self.list.next(self.list.call_of[op]),
                        None => return SearchEnd::Exhausted(self.deepest.expect("noted before backtracking")),
                    }
                }
                // The cursor never passes a return entry, and an operation still pending
                // with a return has its return entry in the list.
                EntryKind::Head | EntryKind::Tail => unreachable!("cursor at a sentinel"),
            };
        }
        SearchEnd::Linearized
    }

    /// Linearizes `op` next if its step fits the register and the resulting state is new.
    fn try_linearize(&mut self, op: usize) -> bool {
        if let Step::PutWithLease { end: Some(end), .. } = self.history.steps[op] {
            if self.state.is_linearized(end) {
                return false; // refused: its lease has ended
            }
        }
        let before = self.state.register();
        let Some(after) = self.history.apply(op, before) else {
            return false;
        };
        self.state.set_linearized(op, true);
        self.state.set_register(after);
        if self.seen.contains(self.state.key()) {
            self.state.set_linearized(op, false);
            self.state.set_register(before);
            return false;
        }
        self.seen.insert(self.state.key().into());
        self.stack.push(Frame {
            op,
            register_before: before,
        });
        self.list.lift(op);
        if self.history.is_completed(op) {
            self.completed_pending -= 1;
        }
        true
    }

    /// Undoes the last linearization and returns its operation, or None if there is none.
    fn backtrack(&mut self) -> Option<usize> {
        let Frame { op, register_before } = self.stack.pop()?;
        self.state.set_linearized(op, false);
        self.state.set_register(register_before);
        self.list.unlift(op);
        if self.history.is_completed(op) {
            self.completed_pending += 1;
        }
        Some(op)
    }

    fn note_dead_end(&mut self, blocked_by: usize) {
        if self
            .deepest
            .as_ref()
            .is_some_and(|deepest| deepest.prefix.len() >= self.stack.len())
        {
            return;
        }
        self.deepest = Some(DeadEnd {
            prefix: self.stack.iter().map(|frame| frame.op).collect(),
            register: self.state.register(),
            blocked_by,
        });
    }
}

fn explain(history: &KeyHistory, dead_end: &DeadEnd) -> String {
    let ops = history.events.len();
    let unknown = ops - history.completed_count();
    let mut lines = vec![format!(
        "no linearization of the key's {ops} operations ({unknown} with an unknown outcome)"
    )];
    list_operations(&mut lines, history, dead_end.blocked_by);
    list_prefix(&mut lines, history, dead_end);
    lines.join("\n")
}

/// Lists the operations in invoke order, or a window of them around `blocked_by`.
fn list_operations(lines: &mut Vec<String>, history: &KeyHistory, blocked_by: usize) {
    let ops = history.events.len();
    let end = (blocked_by + EXPLAINED_OPS_MAX / 4).clamp(EXPLAINED_OPS_MAX.min(ops), ops);
    let start = end.saturating_sub(EXPLAINED_OPS_MAX);
    lines.push("operations in invoke order, [invoke, complete] in ns:".to_owned());
    if start > 0 {
        lines.push(format!("  ... {start} earlier operations"));
    }
    for (op, event) in history.events.iter().enumerate().take(end).skip(start) {
        let complete = event.complete.map_or("?".to_owned(), |complete| complete.to_string());
        lines.push(format!(
            "  #{op} client {} [{}, {complete}] {}",
            event.client,
            event.invoke,
            describe(event)
        ));
    }
    if end < ops {
        lines.push(format!("  ... {} later operations", ops - end));
    }
}

/// Lists the longest linearized prefix found, with the value after each step, and the
/// return the search could not get past.
fn list_prefix(lines: &mut Vec<String>, history: &KeyHistory, dead_end: &DeadEnd) {
    let prefix = &dead_end.prefix;
    lines.push(format!(
        "longest linearized prefix found: {} operations, value after each:",
        prefix.len()
    ));
    let hidden = prefix.len().saturating_sub(EXPLAINED_PREFIX_MAX);
    if hidden > 0 {
        lines.push(format!("  ... {hidden} earlier steps"));
    }
    let mut register = None;
    for (position, &op) in prefix.iter().enumerate() {
        register = history
            .apply(op, register)
            .expect("the prefix was linearized step by step");
        if position >= hidden {
            let value = history.describe_register(register);
            lines.push(format!("  #{op} {} => {value}", describe(history.events[op])));
        }
    }
    assert_eq!(
        register, dead_end.register,
        "replaying the prefix gives the value the search had"
    );
    let blocked = history.events[dead_end.blocked_by];
    lines.push(format!(
        "then no pending operation could be linearized before #{} ({}) returned at {} ns, from value {}",
        dead_end.blocked_by,
        describe(blocked),
        blocked.complete.expect("a blocking operation has returned"),
        history.describe_register(dead_end.register)
    ));
}

fn describe(event: &Event) -> String {
    let op = match &event.op {
        Op::Get { .. } => "get".to_owned(),
        Op::Put { value, .. } => format!("put {value:?}"),
        Op::Delete { .. } => "delete".to_owned(),
        Op::Cas {
            expected: Some(expected),
            new,
            ..
        } => format!("cas {expected:?} -> {new:?}"),
        Op::Cas {
            expected: None, new, ..
        } => format!("cas absent -> {new:?}"),
        Op::PutWithLease { value, lease, .. } => format!("put {value:?} with lease {lease:x}"),
        Op::LeaseEnd { lease } => format!("end of lease {lease:x}"),
    };
    let outcome = match &event.outcome {
        Outcome::Get(Some(value)) => format!("{value:?}"),
        Outcome::Get(None) => "absent".to_owned(),
        Outcome::Put => "ok".to_owned(),
        Outcome::Delete { deleted: true } => "deleted".to_owned(),
        Outcome::Delete { deleted: false } => "not found".to_owned(),
        Outcome::Cas { succeeded: true } => "succeeded".to_owned(),
        Outcome::Cas { succeeded: false } => "failed".to_owned(),
        Outcome::LeaseEnded => "ended".to_owned(),
        Outcome::Unknown => "unknown".to_owned(),
    };
    format!("{op}: {outcome}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event of client 0 over [invoke, complete] in ms; `complete` None is unknown.
    fn event(op: Op, invoke: u64, complete: Option<u64>, outcome: Outcome) -> Event {
        Event {
            client: 0,
            op,
            invoke: invoke * 1_000_000,
            complete: complete.map(|complete| complete * 1_000_000),
            outcome: if complete.is_some() { outcome } else { Outcome::Unknown },
        }
    }

    fn put_with_lease(value: &str, lease: i64, invoke: u64, complete: Option<u64>) -> Event {
        let op = Op::PutWithLease {
            key: "k".to_owned(),
            value: value.to_owned(),
            lease,
        };
        event(op, invoke, complete, Outcome::Put)
    }

    fn get(seen: Option<&str>, invoke: u64, complete: u64) -> Event {
        let op = Op::Get { key: "k".to_owned() };
        event(op, invoke, Some(complete), Outcome::Get(seen.map(str::to_owned)))
    }

    fn lease_end(lease: i64, invoke: u64, complete: u64) -> Event {
        event(Op::LeaseEnd { lease }, invoke, Some(complete), Outcome::LeaseEnded)
    }

    fn verdict(history: &[Event]) -> Verdict {
        check(history, Budget::default())
    }

    #[test]
    fn a_leased_key_vanishes_within_its_lease_end() {
        let history = [
            put_with_lease("v1", 7, 0, Some(10)),
            get(Some("v1"), 20, 30),
            lease_end(7, 25, 60),
            get(Some("v1"), 40, 50),
            get(None, 55, 58),
            get(None, 70, 80),
        ];
        assert_eq!(verdict(&history), Verdict::Linearizable);
    }

    #[test]
    fn a_leased_key_read_after_its_lease_ended_is_a_violation() {
        let history = [
            put_with_lease("v1", 7, 0, Some(10)),
            lease_end(7, 20, 30),
            get(Some("v1"), 40, 50),
        ];
        assert!(matches!(verdict(&history), Verdict::Violation { .. }));
    }

    #[test]
    fn a_put_with_an_ended_lease_cannot_succeed() {
        let history = [lease_end(7, 0, 10), put_with_lease("v1", 7, 20, Some(30))];
        assert!(matches!(verdict(&history), Verdict::Violation { .. }));
        // With an unknown outcome it was refused: the key stays absent.
        let history = [
            lease_end(7, 0, 10),
            put_with_lease("v1", 7, 20, None),
            get(Some("v1"), 40, 50),
        ];
        assert!(matches!(verdict(&history), Verdict::Violation { .. }));
    }

    #[test]
    fn a_value_written_again_without_the_lease_outlives_it() {
        let put = Op::Put {
            key: "k".to_owned(),
            value: "v2".to_owned(),
        };
        let history = [
            put_with_lease("v1", 7, 0, Some(10)),
            event(put, 20, Some(30), Outcome::Put),
            lease_end(7, 40, 50),
            get(Some("v2"), 60, 70),
        ];
        assert_eq!(verdict(&history), Verdict::Linearizable);
    }

    #[test]
    fn another_lease_ending_leaves_the_key() {
        let history = [
            put_with_lease("v1", 7, 0, Some(10)),
            put_with_lease("x", 8, 0, Some(10)),
            lease_end(8, 20, 30),
            get(Some("v1"), 40, 50),
        ];
        // "x" is another key's value under lease 8 here: same key "k", so the
        // put of "x" must precede "v1" for the read to see "v1".
        assert_eq!(verdict(&history), Verdict::Linearizable);
    }

    #[test]
    #[should_panic(expected = "ends once")]
    fn a_lease_ends_once() {
        let _ = verdict(&[lease_end(7, 0, 10), lease_end(7, 20, 30)]);
    }
}
