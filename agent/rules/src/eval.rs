//! The compiled form of a rule set and its evaluation.
//!
//! Fields, variables and windows are resolved to slot indices at compile
//! time; constant topic filters and templates are pre-parsed; the hot
//! shapes (`field <op> number`, `field == "string"`) have their own
//! operations. Evaluating a rule walks a small tree of these operations and
//! never looks at a name or parses text.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::filter::TopicFilter;
use crate::value::{Event, Output, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Agg {
    Avg,
    Min,
    Max,
    Sum,
    Count,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrFn {
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
    Const(Value),
    Slot(u16),
    Var(u16),
    Topic,
    Agg(Agg, u16),
    Exists(u16),
    Abs(Box<Op>),
    Not(Box<Op>),
    Neg(Box<Op>),
    And(Box<Op>, Box<Op>),
    Or(Box<Op>, Box<Op>),
    Cmp(Cmp, Box<Op>, Box<Op>),
    CmpSlotNum(Cmp, u16, f64),
    EqSlotStr {
        slot: u16,
        negate: bool,
        value: Arc<str>,
    },
    Arith(Arith, Box<Op>, Box<Op>),
    MatchTopic(TopicFilter),
    Match(Box<Op>, TopicFilter),
    MatchDyn(Box<Op>, Box<Op>),
    Str(StrFn, Box<Op>, Box<Op>),
}

/// A string built at run time from literal pieces and values.
#[derive(Debug, Clone)]
pub(crate) enum Piece {
    Lit(Box<str>),
    Value(Op),
}

#[derive(Debug, Clone)]
pub(crate) struct Template {
    pub pieces: Vec<Piece>,
}

#[derive(Debug, Clone)]
pub(crate) enum CAction {
    Alert(Template),
    Publish(Template, Option<Template>),
    Set(u16, Op),
    Call {
        module: Arc<str>,
        export: Arc<str>,
        payload: Option<Template>,
    },
    /// `modbus_write(device, register, value)`: device and register are
    /// literals (checked against the configuration's writable registers
    /// when the set is loaded), the value is evaluated when the rule fires.
    ModbusWrite {
        device: Arc<str>,
        register: u16,
        value: Op,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct CRule {
    pub name: Arc<str>,
    pub cond: Op,
    pub actions: Vec<CAction>,
    pub every_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WindowSpec {
    pub slot: u16,
    pub field: Arc<str>,
    pub dur_ms: u64,
}

/// The mutable side of a rule set: variables, window contents and when each
/// rate-limited rule last fired. Kept apart from the (shared, immutable)
/// compiled set so that a hot swap can hand it over.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub(crate) vars: Vec<Value>,
    pub(crate) windows: Vec<Window>,
    pub(crate) last_fired: Vec<Option<u64>>,
}

/// Samples in a window are bounded: a window over a fast stream keeps the
/// most recent ones (its aggregate then covers a shorter span).
pub const MAX_WINDOW_SAMPLES: usize = 65_536;

#[derive(Debug, Clone, Default)]
pub(crate) struct Window {
    samples: VecDeque<(u64, f64)>,
    sum: f64,
    // Monotonic queues: front is the current min / max.
    mins: VecDeque<(u64, f64)>,
    maxs: VecDeque<(u64, f64)>,
}

impl Window {
    fn push(&mut self, t: u64, v: f64) {
        if self.samples.len() == MAX_WINDOW_SAMPLES {
            self.pop_front();
        }
        self.samples.push_back((t, v));
        self.sum += v;
        while self.mins.back().is_some_and(|&(_, m)| m > v) {
            self.mins.pop_back();
        }
        self.mins.push_back((t, v));
        while self.maxs.back().is_some_and(|&(_, m)| m < v) {
            self.maxs.pop_back();
        }
        self.maxs.push_back((t, v));
    }

    fn pop_front(&mut self) {
        if let Some((t, v)) = self.samples.pop_front() {
            self.sum -= v;
            if self
                .mins
                .front()
                .is_some_and(|&(mt, mv)| mt == t && mv == v)
            {
                self.mins.pop_front();
            }
            if self
                .maxs
                .front()
                .is_some_and(|&(mt, mv)| mt == t && mv == v)
            {
                self.maxs.pop_front();
            }
        }
        if self.samples.is_empty() {
            // Start again from an exact zero instead of carrying rounding.
            self.sum = 0.0;
        }
    }

    /// Drops samples at or before `now - dur` (none while `now < dur`).
    fn evict(&mut self, now: u64, dur: u64) {
        let Some(cutoff) = now.checked_sub(dur) else {
            return;
        };
        while self.samples.front().is_some_and(|&(t, _)| t <= cutoff) {
            self.pop_front();
        }
    }

    fn get(&self, agg: Agg) -> Value {
        let n = self.samples.len();
        match agg {
            Agg::Count => Value::Num(n as f64),
            _ if n == 0 => Value::Missing,
            Agg::Sum => Value::Num(self.sum),
            Agg::Avg => Value::Num(self.sum / n as f64),
            Agg::Min => self
                .mins
                .front()
                .map_or(Value::Missing, |&(_, v)| Value::Num(v)),
            Agg::Max => self
                .maxs
                .front()
                .map_or(Value::Missing, |&(_, v)| Value::Num(v)),
        }
    }
}

pub(crate) struct Ctx<'a> {
    pub event: &'a Event,
    pub vars: &'a [Value],
    pub windows: &'a [Window],
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Num(n) => Some(*n),
        _ => None,
    }
}

fn compare(op: Cmp, a: &Value, b: &Value) -> Option<bool> {
    use std::cmp::Ordering;
    let ord = match (a, b) {
        (Value::Num(x), Value::Num(y)) => x.partial_cmp(y)?,
        (Value::Str(x), Value::Str(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => return None,
    };
    Some(match op {
        Cmp::Eq => ord == Ordering::Equal,
        Cmp::Ne => ord != Ordering::Equal,
        Cmp::Lt => ord == Ordering::Less,
        Cmp::Le => ord != Ordering::Greater,
        Cmp::Gt => ord == Ordering::Greater,
        Cmp::Ge => ord != Ordering::Less,
    })
}

#[inline]
fn cmp_num(op: Cmp, x: f64, y: f64) -> bool {
    match op {
        Cmp::Eq => x == y,
        Cmp::Ne => x != y,
        Cmp::Lt => x < y,
        Cmp::Le => x <= y,
        Cmp::Gt => x > y,
        Cmp::Ge => x >= y,
    }
}

impl Op {
    /// A condition: `Some(true)`, `Some(false)`, or `None` when unknown
    /// (a missing or mistyped value).
    #[inline]
    pub(crate) fn test(&self, cx: &Ctx<'_>) -> Option<bool> {
        match self {
            Op::CmpSlotNum(op, slot, c) => match cx.event.slots.get(*slot as usize) {
                Some(Value::Num(x)) => Some(cmp_num(*op, *x, *c)),
                _ => None,
            },
            Op::EqSlotStr {
                slot,
                negate,
                value,
            } => match cx.event.slots.get(*slot as usize) {
                Some(Value::Str(s)) => Some((**s == **value) != *negate),
                _ => None,
            },
            Op::And(a, b) => match a.test(cx) {
                Some(false) => Some(false),
                first => match (first, b.test(cx)) {
                    (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                },
            },
            Op::Or(a, b) => match a.test(cx) {
                Some(true) => Some(true),
                first => match (first, b.test(cx)) {
                    (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                },
            },
            Op::Not(a) => a.test(cx).map(|b| !b),
            Op::Cmp(op, a, b) => compare(*op, &a.eval(cx), &b.eval(cx)),
            Op::MatchTopic(f) => Some(f.matches(&cx.event.topic)),
            Op::Match(a, f) => match a.eval(cx) {
                Value::Str(s) => Some(f.matches(&s)),
                _ => None,
            },
            Op::MatchDyn(a, b) => match (a.eval(cx), b.eval(cx)) {
                (Value::Str(s), Value::Str(f)) => {
                    TopicFilter::parse(&f).ok().map(|f| f.matches(&s))
                }
                _ => None,
            },
            Op::Exists(slot) => Some(!matches!(
                cx.event.slots.get(*slot as usize),
                None | Some(Value::Missing)
            )),
            Op::Str(f, a, b) => match (a.eval(cx), b.eval(cx)) {
                (Value::Str(s), Value::Str(p)) => Some(match f {
                    StrFn::Contains => s.contains(&*p),
                    StrFn::StartsWith => s.starts_with(&*p),
                    StrFn::EndsWith => s.ends_with(&*p),
                }),
                _ => None,
            },
            other => match other.eval(cx) {
                Value::Bool(b) => Some(b),
                _ => None,
            },
        }
    }

    pub(crate) fn eval(&self, cx: &Ctx<'_>) -> Value {
        match self {
            Op::Const(v) => v.clone(),
            Op::Slot(s) => cx.event.slots.get(*s as usize).cloned().unwrap_or_default(),
            Op::Var(v) => cx.vars.get(*v as usize).cloned().unwrap_or_default(),
            Op::Topic => Value::Str(cx.event.topic.clone()),
            Op::Agg(agg, w) => cx
                .windows
                .get(*w as usize)
                .map_or(Value::Missing, |w| w.get(*agg)),
            Op::Abs(a) => num(&a.eval(cx)).map_or(Value::Missing, |n| Value::Num(n.abs())),
            Op::Neg(a) => num(&a.eval(cx)).map_or(Value::Missing, |n| Value::Num(-n)),
            Op::Arith(op, a, b) => {
                let (a, b) = (a.eval(cx), b.eval(cx));
                match (op, &a, &b) {
                    (Arith::Add, Value::Str(x), Value::Str(y)) => {
                        let mut s = String::with_capacity(x.len() + y.len());
                        s.push_str(x);
                        s.push_str(y);
                        Value::Str(s.into())
                    }
                    (_, Value::Num(x), Value::Num(y)) => {
                        let r = match op {
                            Arith::Add => x + y,
                            Arith::Sub => x - y,
                            Arith::Mul => x * y,
                            Arith::Div => x / y,
                            Arith::Rem => x % y,
                        };
                        if r.is_finite() {
                            Value::Num(r)
                        } else {
                            Value::Missing
                        }
                    }
                    _ => Value::Missing,
                }
            }
            cond => cond.test(cx).map_or(Value::Missing, Value::Bool),
        }
    }
}

impl Template {
    fn render(&self, cx: &Ctx<'_>) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Value(op) => {
                    let _ = write!(out, "{}", op.eval(cx));
                }
            }
        }
        out
    }
}

impl CRule {
    /// Evaluates the rule against `event`; runs its actions when it fires.
    #[inline]
    pub(crate) fn run(
        &self,
        index: usize,
        event: &Event,
        state: &mut State,
        out: &mut Vec<Output>,
    ) -> bool {
        let cx = Ctx {
            event,
            vars: &state.vars,
            windows: &state.windows,
        };
        if self.cond.test(&cx) != Some(true) {
            return false;
        }
        if let Some(every) = self.every_ms {
            if let Some(Some(last)) = state.last_fired.get(index)
                && event.time_ms < last.saturating_add(every)
                && event.time_ms >= *last
            {
                return false;
            }
            if let Some(slot) = state.last_fired.get_mut(index) {
                *slot = Some(event.time_ms);
            }
        }
        for action in &self.actions {
            let cx = Ctx {
                event,
                vars: &state.vars,
                windows: &state.windows,
            };
            match action {
                CAction::Alert(t) => out.push(Output::Alert {
                    rule: self.name.clone(),
                    message: t.render(&cx),
                }),
                CAction::Publish(topic, payload) => out.push(Output::Publish {
                    rule: self.name.clone(),
                    topic: topic.render(&cx),
                    payload: match payload {
                        Some(t) => t.render(&cx).into_bytes(),
                        None => event.payload.to_vec(),
                    },
                }),
                CAction::Call {
                    module,
                    export,
                    payload,
                } => out.push(Output::Call {
                    rule: self.name.clone(),
                    module: module.clone(),
                    export: export.clone(),
                    payload: match payload {
                        Some(t) => t.render(&cx).into_bytes(),
                        None => event.payload.to_vec(),
                    },
                }),
                CAction::ModbusWrite {
                    device,
                    register,
                    value,
                } => out.push(Output::ModbusWrite {
                    rule: self.name.clone(),
                    device: device.clone(),
                    register: *register,
                    value: value.eval(&cx),
                }),
                CAction::Set(var, op) => {
                    let v = op.eval(&cx);
                    if let Some(slot) = state.vars.get_mut(*var as usize) {
                        *slot = v;
                    }
                }
            }
        }
        true
    }
}

impl State {
    /// Feeds the event's values into the windows and drops expired samples.
    pub(crate) fn observe(&mut self, specs: &[WindowSpec], event: &Event) {
        for (w, spec) in self.windows.iter_mut().zip(specs) {
            if let Some(Value::Num(v)) = event.slots.get(spec.slot as usize) {
                w.push(event.time_ms, *v);
            }
            w.evict(event.time_ms, spec.dur_ms);
        }
    }
}
