//! Tests of the linearizability checker the fault-injection suite uses: hand-written
//! histories with known verdicts, and random histories made linearizable by construction
//! (a simulated run against the model), which must pass, and then broken, which must fail.

use std::collections::BTreeMap;
use std::time::Instant;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::lincheck::{check, Budget, Event, Op, Outcome, Verdict};

// ---- Events, built as a test reads them: who, what, when, what they saw ----

fn put(client: u32, key: &str, value: &str, invoke: u64, complete: u64) -> Event {
    let op = Op::Put {
        key: key.to_owned(),
        value: value.to_owned(),
    };
    Event {
        client,
        op,
        invoke,
        complete: Some(complete),
        outcome: Outcome::Put,
    }
}

fn get(client: u32, key: &str, seen: Option<&str>, invoke: u64, complete: u64) -> Event {
    let op = Op::Get { key: key.to_owned() };
    Event {
        client,
        op,
        invoke,
        complete: Some(complete),
        outcome: Outcome::Get(seen.map(str::to_owned)),
    }
}

fn delete(client: u32, key: &str, deleted: bool, invoke: u64, complete: u64) -> Event {
    let op = Op::Delete { key: key.to_owned() };
    Event {
        client,
        op,
        invoke,
        complete: Some(complete),
        outcome: Outcome::Delete { deleted },
    }
}

fn cas(client: u32, key: &str, expected: Option<&str>, new: &str, succeeded: bool, span: (u64, u64)) -> Event {
    let op = Op::Cas {
        key: key.to_owned(),
        expected: expected.map(str::to_owned),
        new: new.to_owned(),
    };
    Event {
        client,
        op,
        invoke: span.0,
        complete: Some(span.1),
        outcome: Outcome::Cas { succeeded },
    }
}

/// An operation whose request was sent at `invoke` and whose reply never came.
fn unknown(client: u32, op: Op, invoke: u64) -> Event {
    Event {
        client,
        op,
        invoke,
        complete: None,
        outcome: Outcome::Unknown,
    }
}

fn put_op(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

fn assert_linearizable(history: &[Event]) {
    let verdict = check(history, Budget::default());
    assert_eq!(verdict, Verdict::Linearizable, "history: {history:#?}");
}

/// Asserts a violation on `key` and returns its explanation.
fn assert_violation(history: &[Event], key: &str) -> String {
    match check(history, Budget::default()) {
        Verdict::Violation {
            key: reported,
            explanation,
        } => {
            assert_eq!(reported, key, "{explanation}");
            explanation
        }
        verdict => panic!("expected a violation on {key:?}, got {verdict:?} for {history:#?}"),
    }
}

// ---- Hand-written histories ----

#[test]
fn empty_history_is_linearizable() {
    assert_linearizable(&[]);
}

#[test]
fn sequential_history_of_every_operation_is_linearizable() {
    assert_linearizable(&[
        get(1, "x", None, 0, 10),
        put(1, "x", "1", 20, 30),
        get(2, "x", Some("1"), 40, 50),
        cas(1, "x", Some("1"), "2", true, (60, 70)),
        cas(2, "x", Some("1"), "3", false, (80, 90)),
        get(1, "x", Some("2"), 100, 110),
        delete(2, "x", true, 120, 130),
        delete(1, "x", false, 140, 150),
        cas(1, "x", None, "4", true, (160, 170)),
        get(2, "x", Some("4"), 180, 190),
    ]);
}

#[test]
fn read_after_an_acknowledged_put_must_see_it() {
    let explanation = assert_violation(&[put(1, "x", "1", 0, 10), get(2, "x", None, 20, 30)], "x");
    assert!(
        explanation.contains("#1 client 2 [20, 30] get: absent"),
        "{explanation}"
    );
    assert!(explanation.contains("#0 put \"1\": ok => \"1\""), "{explanation}");
}

#[test]
fn read_after_an_acknowledged_overwrite_must_not_see_the_older_value() {
    assert_violation(
        &[
            put(1, "x", "1", 0, 10),
            put(1, "x", "2", 20, 30),
            get(2, "x", Some("1"), 40, 50),
        ],
        "x",
    );
}

#[test]
fn read_overlapping_a_put_may_see_the_old_or_the_new_value() {
    for seen in [None, Some("1")] {
        assert_linearizable(&[put(1, "x", "1", 10, 50), get(2, "x", seen, 20, 40)]);
    }
}

#[test]
fn return_and_invoke_at_the_same_instant_overlap() {
    assert_linearizable(&[put(1, "x", "1", 0, 100), get(2, "x", None, 100, 110)]);
    assert_violation(&[put(1, "x", "1", 0, 100), get(2, "x", None, 101, 110)], "x");
}

#[test]
fn unknown_put_may_take_effect_long_after_its_invoke() {
    assert_linearizable(&[
        unknown(1, put_op("x", "1"), 0),
        get(2, "x", None, 100, 110),
        get(2, "x", Some("1"), 500, 510),
    ]);
}

#[test]
fn unknown_put_may_never_take_effect() {
    assert_linearizable(&[unknown(1, put_op("x", "1"), 0), get(2, "x", None, 100, 110)]);
}

#[test]
fn unknown_put_takes_effect_at_most_once() {
    assert_violation(
        &[
            unknown(1, put_op("x", "1"), 0),
            put(2, "x", "2", 10, 20),
            get(2, "x", Some("1"), 30, 40),
            get(2, "x", Some("2"), 50, 60),
            get(2, "x", Some("1"), 70, 80),
        ],
        "x",
    );
}

#[test]
fn unknown_put_cannot_take_effect_before_its_invoke() {
    assert_violation(&[get(2, "x", Some("1"), 0, 10), unknown(1, put_op("x", "1"), 20)], "x");
}

#[test]
fn unknown_get_constrains_nothing() {
    let lost_read = Event {
        client: 2,
        op: Op::Get { key: "x".to_owned() },
        invoke: 5,
        complete: None,
        outcome: Outcome::Unknown,
    };
    assert_linearizable(&[put(1, "x", "1", 0, 10), lost_read]);
}

#[test]
fn read_of_a_value_nobody_wrote_is_a_violation() {
    assert_violation(&[put(1, "x", "1", 0, 10), get(2, "x", Some("2"), 5, 30)], "x");
}

#[test]
fn two_concurrent_cas_from_the_same_value_cannot_both_succeed() {
    assert_violation(
        &[
            put(1, "x", "0", 0, 10),
            cas(1, "x", Some("0"), "a", true, (20, 50)),
            cas(2, "x", Some("0"), "b", true, (25, 45)),
        ],
        "x",
    );
}

#[test]
fn one_of_two_concurrent_cas_from_the_same_value_succeeds() {
    assert_linearizable(&[
        put(1, "x", "0", 0, 10),
        cas(1, "x", Some("0"), "a", true, (20, 50)),
        cas(2, "x", Some("0"), "b", false, (25, 45)),
        get(3, "x", Some("a"), 60, 70),
    ]);
}

#[test]
fn delete_of_a_key_absent_at_every_linearization_cannot_report_deleted() {
    assert_violation(&[delete(1, "x", true, 0, 10)], "x");
    assert_violation(
        &[
            put(1, "x", "1", 0, 10),
            delete(1, "x", true, 20, 30),
            delete(2, "x", true, 40, 50),
        ],
        "x",
    );
}

#[test]
fn delete_concurrent_with_a_put_may_find_the_key() {
    assert_linearizable(&[
        put(1, "x", "1", 0, 30),
        delete(2, "x", true, 10, 20),
        get(3, "x", None, 40, 50),
    ]);
}

#[test]
fn explanation_of_a_long_history_lists_a_window_around_the_failure() {
    let mut history: Vec<Event> = (0..1000)
        .map(|i| put(1, "x", &i.to_string(), 10 * i, 10 * i + 5))
        .collect();
    history.push(get(2, "x", Some("998"), 20_000, 20_010));
    let explanation = assert_violation(&history, "x");
    assert!(explanation.contains("... 801 earlier operations"), "{explanation}");
    assert!(
        explanation.contains("#1000 client 2 [20000, 20010] get: \"998\""),
        "{explanation}"
    );
    assert!(
        explanation.contains("longest linearized prefix found: 1000 operations"),
        "{explanation}"
    );
    assert!(explanation.contains("... 950 earlier steps"), "{explanation}");
    assert!(explanation.lines().count() < 300, "{explanation}");
}

#[test]
fn violation_on_one_key_is_reported_while_another_key_is_fine() {
    let explanation = assert_violation(
        &[
            put(1, "a", "1", 0, 10),
            put(2, "b", "1", 0, 10),
            get(1, "a", Some("1"), 20, 30),
            get(2, "b", None, 20, 30),
        ],
        "b",
    );
    assert!(
        !explanation.contains("client 1"),
        "only key b's operations are listed: {explanation}"
    );
}

#[test]
fn violations_on_several_keys_report_the_smallest_key_every_time() {
    let history = [
        put(1, "c", "1", 0, 10),
        get(1, "c", None, 20, 30),
        put(2, "b", "1", 0, 10),
        get(2, "b", None, 20, 30),
        put(3, "a", "1", 0, 10),
        get(3, "a", Some("1"), 20, 30),
    ];
    let first = assert_violation(&history, "b");
    let mut reversed = history.clone();
    reversed.reverse();
    assert_eq!(assert_violation(&reversed, "b"), first);
}

/// The shape of a fault-injection run: 10 clients, 8 keys, 2000 operations, ~5% of writes
/// with an unknown outcome.
fn fault_run_sized_history() -> Vec<Event> {
    simulate(&seeded_plan(42, 10, 8, 200))
}

#[test]
fn spent_budget_is_inconclusive_not_a_verdict() {
    let history = fault_run_sized_history();
    let tiny = Budget { states_per_key: 10 };
    assert_eq!(check(&history, tiny), Verdict::Inconclusive { key: "k0".to_owned() });
    assert_linearizable(&history);
}

#[test]
fn violation_on_one_key_outranks_a_spent_budget_on_another() {
    let mut history = fault_run_sized_history();
    history.extend([put(1, "z", "1", 0, 10), get(2, "z", None, 20, 30)]);
    let tiny = Budget { states_per_key: 10 };
    assert!(matches!(check(&history, tiny), Verdict::Violation { key, .. } if key == "z"));
}

#[test]
#[should_panic(expected = "a completion time goes with a known outcome")]
fn unknown_outcome_with_a_completion_time_is_malformed() {
    let mut event = put(1, "x", "1", 0, 10);
    event.outcome = Outcome::Unknown;
    check(&[event], Budget::default());
}

#[test]
#[should_panic(expected = "a completion time goes with a known outcome")]
fn known_outcome_without_a_completion_time_is_malformed() {
    let mut event = put(1, "x", "1", 0, 10);
    event.complete = None;
    check(&[event], Budget::default());
}

#[test]
#[should_panic(expected = "completed before it was invoked")]
fn completion_before_invoke_is_malformed() {
    check(&[put(1, "x", "1", 10, 9)], Budget::default());
}

#[test]
#[should_panic(expected = "the outcome is of another kind of operation")]
fn outcome_of_another_operation_is_malformed() {
    let mut event = put(1, "x", "1", 0, 10);
    event.outcome = Outcome::Cas { succeeded: true };
    check(&[event], Budget::default());
}

#[test]
fn history_read_back_from_json_lines_checks_the_same() {
    let histories = [
        simulate(&seeded_plan(7, 4, 2, 30)),
        vec![
            unknown(1, put_op("x", "1"), 0),
            cas(1, "x", Some("1"), "2", true, (5, 9)),
            get(2, "x", None, 20, 30),
        ],
    ];
    for history in histories {
        let lines: Vec<String> = history
            .iter()
            .map(|event| serde_json::to_string(event).unwrap())
            .collect();
        let text = lines.join("\n");
        let read_back: Vec<Event> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(read_back, history);
        assert_eq!(check(&read_back, Budget::default()), check(&history, Budget::default()));
    }
}

#[test]
fn two_thousand_operations_over_eight_keys_check_within_the_default_budget() {
    let history = fault_run_sized_history();
    assert_eq!(history.len(), 2000);
    let unknown_writes = history.iter().filter(|event| event.outcome == Outcome::Unknown).count();
    let started = Instant::now();
    let verdict = check(&history, Budget::default());
    eprintln!(
        "checked {} events ({unknown_writes} unknown) in {:?}",
        history.len(),
        started.elapsed()
    );
    assert_eq!(verdict, Verdict::Linearizable);
}

// ---- Histories linearizable by construction ----
//
// Each client runs its planned operations one after another. Every operation takes effect
// at one instant inside its [invoke, complete] interval; the model applies the effects in
// time order (ties by client), which is a legal linearization, and the clients record what
// the model answered. Values are unique, so a read tells which write it saw.

#[derive(Debug, Clone)]
struct PlannedOp {
    key: usize,
    action: Action,
    think_ns: u64,
    to_effect_ns: u64,
    to_reply_ns: u64,
    fate: Fate,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Get,
    Put,
    Delete,
    Cas(Expect),
}

/// What a CAS expects, resolved when it takes effect.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Current,
    Absent,
    /// One of the values written to the key so far (the index is taken modulo their count).
    Written(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Acknowledged,
    /// Took effect, but the client never heard back.
    UnknownApplied,
    /// Never took effect, and the client never heard back.
    UnknownLost,
}

/// One planned operation list per client.
type Plan = Vec<Vec<PlannedOp>>;

/// A planned operation placed in time.
struct Timed<'p> {
    client: usize,
    planned: &'p PlannedOp,
    invoke: u64,
    effect: u64,
    complete: u64,
}

fn simulate(plan: &Plan) -> Vec<Event> {
    let mut timed = place_in_time(plan);
    timed.sort_by_key(|op| (op.effect, op.client));
    let mut model = Model::default();
    timed.iter().map(|op| model.run(op)).collect()
}

fn place_in_time(plan: &Plan) -> Vec<Timed<'_>> {
    let mut timed = Vec::new();
    for (client, ops) in plan.iter().enumerate() {
        let mut now = 0;
        for planned in ops {
            let invoke = now + planned.think_ns;
            let effect = invoke + planned.to_effect_ns;
            let complete = effect + planned.to_reply_ns;
            timed.push(Timed {
                client,
                planned,
                invoke,
                effect,
                complete,
            });
            now = complete;
        }
    }
    timed
}

#[derive(Default)]
struct Model {
    values: BTreeMap<String, String>,
    written: BTreeMap<String, Vec<String>>,
    writes: usize,
}

impl Model {
    /// Runs one operation at its effect time and returns the event its client records.
    fn run(&mut self, timed: &Timed) -> Event {
        let key = format!("k{}", timed.planned.key);
        let takes_effect = timed.planned.fate != Fate::UnknownLost;
        let (op, outcome) = match timed.planned.action {
            Action::Get => (
                Op::Get { key: key.clone() },
                Outcome::Get(self.values.get(&key).cloned()),
            ),
            Action::Put => {
                let value = self.fresh_value();
                if takes_effect {
                    self.write(&key, Some(&value));
                }
                (Op::Put { key, value }, Outcome::Put)
            }
            Action::Delete => {
                let deleted = self.values.contains_key(&key);
                if takes_effect {
                    self.write(&key, None);
                }
                (Op::Delete { key }, Outcome::Delete { deleted })
            }
            Action::Cas(expect) => {
                let expected = self.resolve(&key, expect);
                let new = self.fresh_value();
                let succeeded = self.values.get(&key) == expected.as_ref();
                if succeeded && takes_effect {
                    self.write(&key, Some(&new));
                }
                (Op::Cas { key, expected, new }, Outcome::Cas { succeeded })
            }
        };
        let acknowledged = timed.planned.fate == Fate::Acknowledged;
        Event {
            client: timed.client as u32,
            op,
            invoke: timed.invoke,
            complete: acknowledged.then_some(timed.complete),
            outcome: if acknowledged { outcome } else { Outcome::Unknown },
        }
    }

    fn fresh_value(&mut self) -> String {
        self.writes += 1;
        format!("v{}", self.writes)
    }

    fn write(&mut self, key: &str, value: Option<&String>) {
        match value {
            Some(value) => {
                self.values.insert(key.to_owned(), value.clone());
                self.written.entry(key.to_owned()).or_default().push(value.clone());
            }
            None => {
                self.values.remove(key);
            }
        }
    }

    fn resolve(&self, key: &str, expect: Expect) -> Option<String> {
        match expect {
            Expect::Current => self.values.get(key).cloned(),
            Expect::Absent => None,
            Expect::Written(index) => {
                let written = self.written.get(key).filter(|written| !written.is_empty())?;
                Some(written[index % written.len()].clone())
            }
        }
    }
}

/// A plan of `clients` clients with `ops_per_client` operations each over `keys` keys, with
/// ~5% of writes unknown: the shape of a fault-injection run.
fn seeded_plan(seed: u64, clients: usize, keys: usize, ops_per_client: usize) -> Plan {
    let mut rng = StdRng::seed_from_u64(seed);
    let planned_op = |rng: &mut StdRng| {
        let action = match rng.gen_range(0..10) {
            0..=3 => Action::Get,
            4..=6 => Action::Put,
            7 => Action::Delete,
            _ => Action::Cas([Expect::Current, Expect::Absent, Expect::Written(rng.gen())][rng.gen_range(0..3)]),
        };
        let fate = match rng.gen_range(0..40) {
            0 => Fate::UnknownApplied,
            1 => Fate::UnknownLost,
            _ => Fate::Acknowledged,
        };
        let fate = if matches!(action, Action::Get) {
            Fate::Acknowledged
        } else {
            fate
        };
        PlannedOp {
            key: rng.gen_range(0..keys),
            action,
            think_ns: rng.gen_range(0..2_000),
            to_effect_ns: rng.gen_range(0..10_000),
            to_reply_ns: rng.gen_range(0..10_000),
            fate,
        }
    };
    (0..clients)
        .map(|_| (0..ops_per_client).map(|_| planned_op(&mut rng)).collect())
        .collect()
}

fn expect_strategy() -> impl Strategy<Value = Expect> {
    prop_oneof![
        Just(Expect::Current),
        Just(Expect::Absent),
        any::<usize>().prop_map(Expect::Written)
    ]
}

fn action_strategy() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => Just(Action::Get),
        3 => Just(Action::Put),
        1 => Just(Action::Delete),
        2 => expect_strategy().prop_map(Action::Cas),
    ]
}

fn fate_strategy() -> impl Strategy<Value = Fate> {
    prop_oneof![8 => Just(Fate::Acknowledged), 1 => Just(Fate::UnknownApplied), 1 => Just(Fate::UnknownLost)]
}

/// Short, often zero, delays: many overlaps and many equal timestamps.
fn planned_op_strategy(keys: usize) -> impl Strategy<Value = PlannedOp> {
    (
        0..keys,
        action_strategy(),
        0..30u64,
        0..30u64,
        0..30u64,
        fate_strategy(),
    )
        .prop_map(|(key, action, think_ns, to_effect_ns, to_reply_ns, fate)| PlannedOp {
            key,
            action,
            think_ns,
            to_effect_ns,
            to_reply_ns,
            fate,
        })
}

fn plan_strategy() -> impl Strategy<Value = Plan> {
    (2..=6usize, 1..=3usize).prop_flat_map(|(clients, keys)| {
        prop::collection::vec(prop::collection::vec(planned_op_strategy(keys), 0..=12), clients)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn simulated_histories_are_linearizable(plan in plan_strategy()) {
        let history = simulate(&plan);
        prop_assert_eq!(check(&history, Budget::default()), Verdict::Linearizable, "{:#?}", history);
    }

    #[test]
    fn read_of_a_value_never_written_is_a_violation(plan in plan_strategy(), pick in any::<prop::sample::Index>()) {
        let mut history = simulate(&plan);
        let reads_of_values: Vec<usize> = (0..history.len())
            .filter(|&i| matches!(history[i].outcome, Outcome::Get(Some(_))))
            .collect();
        prop_assume!(!reads_of_values.is_empty());
        let read = &mut history[*pick.get(&reads_of_values)];
        read.outcome = Outcome::Get(Some("never written".to_owned()));
        let key = read.op.key().expect("a read names its key").to_owned();
        match check(&history, Budget::default()) {
            Verdict::Violation { key: reported, .. } => prop_assert_eq!(reported, key),
            verdict => prop_assert!(false, "expected a violation, got {:?}", verdict),
        }
    }
}
