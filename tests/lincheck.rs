//! A linearizability checker for histories of operations on independent objects (Wing & Gong's
//! search with Lowe's memoization, as Porcupine and Knossos do), over the model of one
//! Kubernetes object: create, get, and update with a `resourceVersion` precondition.
//!
//! A history records, per operation, when the client called and when it returned, and what it
//! saw. An operation whose outcome is unknown (a timeout, a 5xx: it may or may not have taken
//! effect) may be placed anywhere after its call, or left out. Objects are independent, so each
//! key is checked alone (P-compositionality).

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Create with this value.
    Create(String),
    /// Read.
    Get,
    /// Replace the value if the object is at this resourceVersion.
    Update {
        /// The new value.
        value: String,
        /// The resourceVersion precondition.
        expect: u64,
    },
}

/// What the client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Written at this resourceVersion.
    Written(u64),
    /// Read: the value and its resourceVersion.
    Read(String, u64),
    /// 404.
    NotFound,
    /// 409 on create: it exists.
    AlreadyExists,
    /// 409 on update: the resourceVersion did not match.
    Conflict,
    /// No definite answer: it may or may not have happened.
    Unknown,
}

/// One operation of the history.
#[derive(Debug, Clone)]
pub struct Op {
    /// The object.
    pub key: String,
    /// Request.
    pub input: Input,
    /// Response.
    pub output: Output,
    /// When the call started.
    pub call: Instant,
    /// When it returned (ignored for [`Output::Unknown`]: it may take effect any time later).
    pub ret: Instant,
}

/// The object as the model holds it: absent, or a value at a resourceVersion (`None` when it
/// was written by an operation whose answer was lost, so its resourceVersion is not known).
type State = Option<(String, Option<u64>)>;

/// The next state if `op` may take effect in `state` and answer what it answered.
fn step(state: &State, input: &Input, output: &Output) -> Option<State> {
    match (input, output) {
        (Input::Create(v), Output::Written(rv)) => {
            state.is_none().then(|| Some((v.clone(), Some(*rv))))
        }
        (Input::Create(v), Output::Unknown) => state.is_none().then(|| Some((v.clone(), None))),
        (Input::Create(_), Output::AlreadyExists) => state.is_some().then(|| state.clone()),
        (Input::Get, Output::Read(v, rv)) => match state {
            Some((cur, at)) if cur == v && at.is_none_or(|a| a == *rv) => {
                Some(Some((cur.clone(), Some(*rv))))
            }
            _ => None,
        },
        (Input::Get, Output::NotFound) => state.is_none().then_some(None),
        (Input::Get, Output::Unknown) => Some(state.clone()),
        (Input::Update { value, expect }, Output::Written(rv)) => match state {
            Some((_, at)) if at.is_none_or(|a| a == *expect) => {
                Some(Some((value.clone(), Some(*rv))))
            }
            _ => None,
        },
        (Input::Update { value, expect }, Output::Unknown) => match state {
            Some((_, at)) if at.is_none_or(|a| a == *expect) => Some(Some((value.clone(), None))),
            _ => None,
        },
        (Input::Update { expect, .. }, Output::Conflict) => match state {
            Some((_, at)) if at.is_none_or(|a| a != *expect) => Some(state.clone()),
            _ => None,
        },
        (Input::Update { .. }, Output::NotFound) => state.is_none().then_some(None),
        _ => None,
    }
}

/// Whether the operations on one object have a linearization.
fn linearizable_one(ops: &[Op]) -> bool {
    let n = ops.len();
    assert!(n <= 128, "at most 128 operations per object");
    // Operations whose outcome is unknown may also never take effect: they need not be placed.
    let must: u128 = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.output != Output::Unknown)
        .fold(0, |m, (i, _)| m | (1 << i));
    let mut seen: HashSet<(u128, State)> = HashSet::new();
    // Depth-first: (placed set, state, the order of placement so far).
    let mut stack: Vec<(u128, State)> = vec![(0, None)];
    while let Some((placed, state)) = stack.pop() {
        if placed & must == must {
            return true;
        }
        if !seen.insert((placed, state.clone())) {
            continue;
        }
        // The earliest return among unplaced definite operations bounds what may go next:
        // an operation can be placed only if it was called before every unplaced definite
        // operation returned.
        let bound = ops
            .iter()
            .enumerate()
            .filter(|(i, o)| placed & (1 << i) == 0 && o.output != Output::Unknown)
            .map(|(_, o)| o.ret)
            .min();
        for (i, op) in ops.iter().enumerate() {
            if placed & (1 << i) != 0 || bound.is_some_and(|b| op.call > b) {
                continue;
            }
            if let Some(next) = step(&state, &op.input, &op.output) {
                stack.push((placed | (1 << i), next));
            }
        }
    }
    false
}

/// The keys whose operations have no linearization (empty: the history is linearizable).
pub fn violations(history: &[Op]) -> Vec<String> {
    let mut by_key: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op.clone());
    }
    by_key
        .into_iter()
        .filter(|(_, ops)| !linearizable_one(ops))
        .map(|(k, _)| k.to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An operation on "a" from `call` to `ret` milliseconds.
    fn op(call: u64, ret: u64, input: Input, output: Output) -> Op {
        let t0 = Instant::now();
        Op {
            key: "a".into(),
            input,
            output,
            call: t0 + Duration::from_millis(call),
            ret: t0 + Duration::from_millis(ret),
        }
    }

    fn create(v: &str) -> Input {
        Input::Create(v.into())
    }

    fn update(v: &str, expect: u64) -> Input {
        Input::Update {
            value: v.into(),
            expect,
        }
    }

    fn read(v: &str, rv: u64) -> Output {
        Output::Read(v.into(), rv)
    }

    #[test]
    fn sequential_and_overlapping_histories_that_fit_the_model_should_pass() {
        let h = [
            op(0, 10, create("x"), Output::Written(5)),
            op(20, 30, Input::Get, read("x", 5)),
            // Two overlapping updates from the same version: one wins, one conflicts.
            op(40, 60, update("y", 5), Output::Written(7)),
            op(45, 55, update("z", 5), Output::Conflict),
            op(70, 80, Input::Get, read("y", 7)),
        ];
        assert!(violations(&h).is_empty());
        // A read overlapping a write may see either side of it.
        let h = [
            op(0, 10, create("x"), Output::Written(5)),
            op(20, 50, update("y", 5), Output::Written(6)),
            op(25, 30, Input::Get, read("x", 5)),
            op(35, 45, Input::Get, read("y", 6)),
        ];
        assert!(violations(&h).is_empty());
    }

    #[test]
    fn a_stale_read_or_a_lost_write_should_be_a_violation() {
        // Read after the update returned, yet the old value: stale.
        let h = [
            op(0, 10, create("x"), Output::Written(5)),
            op(20, 30, update("y", 5), Output::Written(6)),
            op(40, 50, Input::Get, read("x", 5)),
        ];
        assert_eq!(violations(&h), ["a"]);
        // An acknowledged create, then NotFound: lost.
        let h = [
            op(0, 10, create("x"), Output::Written(5)),
            op(20, 30, Input::Get, Output::NotFound),
        ];
        assert_eq!(violations(&h), ["a"]);
        // Two updates from the same version both acknowledged: one was lost.
        let h = [
            op(0, 10, create("x"), Output::Written(5)),
            op(20, 30, update("y", 5), Output::Written(6)),
            op(40, 50, update("z", 5), Output::Written(7)),
        ];
        assert_eq!(violations(&h), ["a"]);
    }

    #[test]
    fn an_unknown_outcome_may_take_effect_late_or_never() {
        // The update timed out, but a later read shows it took effect.
        let h = [
            op(0, 10, create("x"), Output::Written(5)),
            op(20, 30, update("y", 5), Output::Unknown),
            op(40, 50, Input::Get, read("y", 9)),
        ];
        assert!(violations(&h).is_empty());
        // ... or it never happened.
        let h = [
            op(0, 10, create("x"), Output::Written(5)),
            op(20, 30, update("y", 5), Output::Unknown),
            op(40, 50, Input::Get, read("x", 5)),
        ];
        assert!(violations(&h).is_empty());
        // But a value nobody wrote is never read.
        let h = [
            op(0, 10, create("x"), Output::Written(5)),
            op(20, 30, update("y", 5), Output::Unknown),
            op(40, 50, Input::Get, read("w", 9)),
        ];
        assert_eq!(violations(&h), ["a"]);
    }
}
