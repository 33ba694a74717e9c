//! Syntax tree → checked, compiled rule set.
//!
//! The checker reports every problem it finds (not only the first), each at
//! its `line:col`: unknown functions and actions, wrong argument counts,
//! comparisons between known different types (literals, `FIELD`-declared
//! fields, variables whose `set`s agree on a type), windows over non-fields,
//! malformed topic filters and templates, duplicate rule names.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::ast::{self, BinOp, Expr, ExprKind, Pos, RuleSet, Type, UnOp};
use crate::decode::{DecodeError, Trie};
use crate::error::{Diagnostic, RulesError};
use crate::eval::{
    Agg, Arith, CAction, CRule, Cmp, Op, Piece, State, StrFn, Template, Window, WindowSpec,
};
use crate::filter::TopicFilter;
use crate::value::{Event, Output, Value};

/// Windows longer than this are refused: their samples would have to be
/// kept for too long to be meaningful on a gateway.
pub const MAX_WINDOW_MS: u64 = 24 * 3_600_000;

pub const FUNCTIONS: &[&str] = &[
    "avg",
    "min",
    "max",
    "sum",
    "count",
    "exists",
    "abs",
    "contains",
    "starts_with",
    "ends_with",
];
pub const ACTIONS: &[&str] = &["alert", "publish", "set", "call", "modbus_write"];

/// A checked and compiled rule set. Immutable; shared by the runtime
/// behind an `ArcSwap`. The mutable side lives in [`State`].
#[derive(Debug)]
pub struct Compiled {
    pub(crate) fields: Vec<Arc<str>>,
    pub(crate) trie: Trie,
    pub(crate) vars: Vec<Arc<str>>,
    pub(crate) windows: Vec<WindowSpec>,
    pub(crate) rules: Vec<CRule>,
    subscriptions: Vec<TopicFilter>,
    writes: Vec<RegisterWrite>,
}

/// A `modbus_write` in a rule set: which register of which device, and
/// where it is written, for the check against the writable registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterWrite {
    pub device: Arc<str>,
    pub register: u16,
    pub pos: Pos,
}

/// A static type, as far as the checker knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Num,
    Str,
    Bool,
    Dur,
    Any,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Num => "number",
            Ty::Str => "string",
            Ty::Bool => "bool",
            Ty::Dur => "duration",
            Ty::Any => "any",
        }
    }
    fn from(t: Type) -> Ty {
        match t {
            Type::Number => Ty::Num,
            Type::String => Ty::Str,
            Type::Bool => Ty::Bool,
        }
    }
    /// Whether a value of this type may stand where `want` is needed.
    fn fits(self, want: Ty) -> bool {
        self == want || self == Ty::Any
    }
}

pub fn compile_source(source: &str) -> Result<Compiled, RulesError> {
    let set = crate::parse::parse(source).map_err(|d| RulesError(vec![d]))?;
    compile(&set)
}

pub fn compile(set: &RuleSet) -> Result<Compiled, RulesError> {
    let mut c = Compiler::default();
    for d in &set.fields {
        if c.declared.insert(d.path.clone(), Ty::from(d.ty)).is_some() {
            c.err(d.pos, format!("field {} is declared twice", d.path));
        }
    }
    c.infer_vars(set);
    let mut subscriptions = Vec::new();
    for s in &set.subscriptions {
        match TopicFilter::parse(&s.filter) {
            Ok(f) => subscriptions.push(f),
            Err(e) => c.err(s.pos, e.0),
        }
    }
    let mut names = HashMap::new();
    let mut unnamed_lines = BTreeSet::new();
    let mut rules = Vec::new();
    for r in &set.rules {
        let name = r.name.clone().unwrap_or_else(|| {
            // A second unnamed rule on the same line is told apart by column.
            if unnamed_lines.insert(r.pos.line) {
                format!("rule@{}", r.pos.line)
            } else {
                format!("rule@{}", r.pos)
            }
        });
        if let Some(first) = names.insert(name.clone(), r.pos) {
            c.err(r.pos, format!("rule {name} is already defined at {first}"));
        }
        let (cond, ty) = c.expr(&r.condition);
        if !ty.fits(Ty::Bool) {
            c.err(
                r.condition.pos,
                format!("a rule's condition must be a bool, this is a {}", ty.name()),
            );
        }
        c.collect_filters(&r.condition, &mut subscriptions);
        let actions = r.actions.iter().filter_map(|a| c.action(a)).collect();
        if r.every_ms == Some(0) {
            c.err(r.pos, "EVERY needs a duration above zero");
        }
        rules.push(CRule {
            name: name.into(),
            cond,
            actions,
            every_ms: r.every_ms,
        });
    }
    if !c.errors.is_empty() {
        c.errors.sort_by_key(|d| (d.pos.line, d.pos.col));
        if c.suppressed > 0 {
            let last = c
                .errors
                .last()
                .map(|d| d.pos)
                .unwrap_or(Pos { line: 1, col: 1 });
            c.errors.push(Diagnostic::new(
                last,
                format!("… and {} more problems not shown", c.suppressed),
            ));
        }
        return Err(RulesError(c.errors));
    }
    let mut seen = BTreeSet::new();
    subscriptions.retain(|f| seen.insert(f.as_str().to_owned()));
    let trie = Trie::new(&c.fields);
    Ok(Compiled {
        fields: c.fields,
        trie,
        vars: c.vars.into_iter().map(|(n, _)| n).collect(),
        windows: c.windows,
        rules,
        subscriptions,
        writes: c.writes,
    })
}

/// Most problems reported for one rule set.
pub const MAX_DIAGNOSTICS: usize = 100;

#[derive(Default)]
struct Compiler {
    errors: Vec<Diagnostic>,
    /// Problems found past `MAX_DIAGNOSTICS`.
    suppressed: usize,
    declared: HashMap<String, Ty>,
    fields: Vec<Arc<str>>,
    writes: Vec<RegisterWrite>,
    field_index: HashMap<String, u16>,
    vars: Vec<(Arc<str>, Ty)>,
    windows: Vec<WindowSpec>,
}

impl Compiler {
    /// Records a problem; past `MAX_DIAGNOSTICS`, only counts them (a
    /// generated or hostile set could otherwise yield millions).
    fn err(&mut self, pos: Pos, message: impl Into<String>) {
        if self.errors.len() < MAX_DIAGNOSTICS {
            self.errors.push(Diagnostic::new(pos, message));
        } else {
            self.suppressed += 1;
        }
    }

    fn slot(&mut self, path: &str) -> u16 {
        if let Some(&i) = self.field_index.get(path) {
            return i;
        }
        let i = self.fields.len() as u16;
        self.fields.push(path.into());
        self.field_index.insert(path.to_owned(), i);
        i
    }

    fn field_ty(&self, path: &str) -> Ty {
        self.declared.get(path).copied().unwrap_or(Ty::Any)
    }

    /// Variables are the targets of `set`; a variable's type is known when
    /// every `set` of it stores a value of one known type.
    fn infer_vars(&mut self, set: &RuleSet) {
        let mut order: Vec<String> = Vec::new();
        let mut types: HashMap<String, Ty> = HashMap::new();
        for r in &set.rules {
            for a in &r.actions {
                if a.name != "set" || a.args.len() != 2 {
                    continue;
                }
                let Some(name) = var_target(&a.args[0]) else {
                    continue;
                };
                let ty = self.literal_ty(&a.args[1]);
                match types.get(&name) {
                    None => {
                        order.push(name.clone());
                        types.insert(name, ty);
                    }
                    Some(&t) if t != ty => {
                        types.insert(name, Ty::Any);
                    }
                    _ => {}
                }
            }
        }
        self.vars = order
            .into_iter()
            .map(|n| {
                let t = types[&n];
                (Arc::from(n.as_str()), t)
            })
            .collect();
    }

    /// The type of an expression without compiling it (for `set` values).
    fn literal_ty(&self, e: &Expr) -> Ty {
        match &e.kind {
            ExprKind::Number(_) | ExprKind::Unary(UnOp::Neg, _) => Ty::Num,
            ExprKind::Str(_) | ExprKind::Topic => Ty::Str,
            ExprKind::Bool(_) | ExprKind::Unary(UnOp::Not, _) => Ty::Bool,
            ExprKind::Field(p) => self.field_ty(p),
            ExprKind::Binary(op, ..) => match op {
                BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => Ty::Num,
                BinOp::Add => Ty::Any,
                _ => Ty::Bool,
            },
            ExprKind::Call(name, _) => match name.as_str() {
                "avg" | "min" | "max" | "sum" | "count" | "abs" => Ty::Num,
                _ => Ty::Bool,
            },
            _ => Ty::Any,
        }
    }

    fn var(&self, name: &str) -> Option<(u16, Ty)> {
        self.vars
            .iter()
            .position(|(n, _)| &**n == name)
            .map(|i| (i as u16, self.vars[i].1))
    }

    fn collect_filters(&self, e: &Expr, out: &mut Vec<TopicFilter>) {
        match &e.kind {
            ExprKind::Binary(BinOp::Matches, a, b) => {
                if let (ExprKind::Topic, ExprKind::Str(f)) = (&a.kind, &b.kind)
                    && let Ok(f) = TopicFilter::parse(f)
                {
                    out.push(f);
                }
            }
            ExprKind::Binary(_, a, b) => {
                self.collect_filters(a, out);
                self.collect_filters(b, out);
            }
            ExprKind::Unary(_, a) => self.collect_filters(a, out),
            _ => {}
        }
    }

    fn expr(&mut self, e: &Expr) -> (Op, Ty) {
        match &e.kind {
            ExprKind::Number(n) => (Op::Const(Value::Num(*n)), Ty::Num),
            ExprKind::Str(s) => (Op::Const(Value::Str(s.as_str().into())), Ty::Str),
            ExprKind::Bool(b) => (Op::Const(Value::Bool(*b)), Ty::Bool),
            ExprKind::Duration(_) => {
                self.err(
                    e.pos,
                    "a duration is only allowed as the length of a window, e.g. avg(x, 30s)",
                );
                (Op::Const(Value::Missing), Ty::Dur)
            }
            ExprKind::Field(p) => (Op::Slot(self.slot(p)), self.field_ty(p)),
            ExprKind::Var(v) => match self.var(v) {
                Some((i, t)) => (Op::Var(i), t),
                None => {
                    self.err(
                        e.pos,
                        format!("variable ${v} is never set (set it with set({v}, value))"),
                    );
                    (Op::Const(Value::Missing), Ty::Any)
                }
            },
            ExprKind::Topic => (Op::Topic, Ty::Str),
            ExprKind::Unary(UnOp::Not, a) => {
                let (op, t) = self.expr(a);
                self.want(a.pos, "`not`", t, Ty::Bool);
                (Op::Not(Box::new(op)), Ty::Bool)
            }
            ExprKind::Unary(UnOp::Neg, a) => {
                let (op, t) = self.expr(a);
                self.want(a.pos, "`-`", t, Ty::Num);
                (Op::Neg(Box::new(op)), Ty::Num)
            }
            ExprKind::Binary(op, a, b) => self.binary(e.pos, *op, a, b),
            ExprKind::Call(name, args) => self.call(e.pos, name, args),
        }
    }

    fn want(&mut self, pos: Pos, what: &str, got: Ty, want: Ty) {
        if !got.fits(want) {
            self.err(
                pos,
                format!("{what} needs a {}, found a {}", want.name(), got.name()),
            );
        }
    }

    fn binary(&mut self, pos: Pos, op: BinOp, a: &Expr, b: &Expr) -> (Op, Ty) {
        // `topic ~ "literal"` is the common subscription test: pre-parse it.
        if op == BinOp::Matches
            && let ExprKind::Str(f) = &b.kind
        {
            let (lhs, t) = self.expr(a);
            self.want(a.pos, "`~`", t, Ty::Str);
            return match TopicFilter::parse(f) {
                Ok(filter) if matches!(a.kind, ExprKind::Topic) => {
                    (Op::MatchTopic(filter), Ty::Bool)
                }
                Ok(filter) => (Op::Match(Box::new(lhs), filter), Ty::Bool),
                Err(msg) => {
                    self.err(b.pos, msg.0);
                    (Op::Const(Value::Missing), Ty::Bool)
                }
            };
        }
        let (x, tx) = self.expr(a);
        let (y, ty) = self.expr(b);
        let sym = op.as_str();
        match op {
            BinOp::And | BinOp::Or => {
                self.want(a.pos, &format!("`{sym}`"), tx, Ty::Bool);
                self.want(b.pos, &format!("`{sym}`"), ty, Ty::Bool);
                let (x, y) = (Box::new(x), Box::new(y));
                (
                    if op == BinOp::And {
                        Op::And(x, y)
                    } else {
                        Op::Or(x, y)
                    },
                    Ty::Bool,
                )
            }
            BinOp::Matches => {
                self.want(a.pos, "`~`", tx, Ty::Str);
                self.want(b.pos, "`~`", ty, Ty::Str);
                (Op::MatchDyn(Box::new(x), Box::new(y)), Ty::Bool)
            }
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                if tx != Ty::Any && ty != Ty::Any && tx != ty {
                    self.err(
                        pos,
                        format!("`{sym}` compares a {} with a {}", tx.name(), ty.name()),
                    );
                }
                if !matches!(op, BinOp::Eq | BinOp::Ne) && (tx == Ty::Bool || ty == Ty::Bool) {
                    self.err(pos, format!("`{sym}` does not order bools"));
                }
                let cmp = match op {
                    BinOp::Eq => Cmp::Eq,
                    BinOp::Ne => Cmp::Ne,
                    BinOp::Lt => Cmp::Lt,
                    BinOp::Le => Cmp::Le,
                    BinOp::Gt => Cmp::Gt,
                    _ => Cmp::Ge,
                };
                (specialise(cmp, x, y), Ty::Bool)
            }
            BinOp::Add if tx == Ty::Str || ty == Ty::Str => {
                self.want(a.pos, "`+` on strings", tx, Ty::Str);
                self.want(b.pos, "`+` on strings", ty, Ty::Str);
                (Op::Arith(Arith::Add, Box::new(x), Box::new(y)), Ty::Str)
            }
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => {
                self.want(a.pos, &format!("`{sym}`"), tx, Ty::Num);
                self.want(b.pos, &format!("`{sym}`"), ty, Ty::Num);
                let arith = match op {
                    BinOp::Add => Arith::Add,
                    BinOp::Sub => Arith::Sub,
                    BinOp::Mul => Arith::Mul,
                    BinOp::Div => Arith::Div,
                    _ => Arith::Rem,
                };
                // `+` of two unknowns may be a concatenation at run time.
                let t = if op == BinOp::Add && tx == Ty::Any && ty == Ty::Any {
                    Ty::Any
                } else {
                    Ty::Num
                };
                (Op::Arith(arith, Box::new(x), Box::new(y)), t)
            }
        }
    }

    fn arity(&mut self, pos: Pos, name: &str, args: &[Expr], min: usize, max: usize) -> bool {
        if args.len() < min || args.len() > max {
            let want = if min == max {
                min.to_string()
            } else {
                format!("{min} to {max}")
            };
            self.err(
                pos,
                format!("{name}() takes {want} argument(s), found {}", args.len()),
            );
            return false;
        }
        true
    }

    fn call(&mut self, pos: Pos, name: &str, args: &[Expr]) -> (Op, Ty) {
        let missing = (Op::Const(Value::Missing), Ty::Any);
        match name {
            "avg" | "min" | "max" | "sum" | "count" => {
                if !self.arity(pos, name, args, 2, 2) {
                    return missing;
                }
                let ExprKind::Field(path) = &args[0].kind else {
                    self.err(
                        args[0].pos,
                        format!("{name}() takes an event field, e.g. {name}(temperature, 30s)"),
                    );
                    return missing;
                };
                let ft = self.field_ty(path);
                if name != "count" {
                    self.want(args[0].pos, &format!("{name}()"), ft, Ty::Num);
                }
                let ExprKind::Duration(ms) = args[1].kind else {
                    self.err(
                        args[1].pos,
                        format!("{name}() takes a window length, e.g. {name}({path}, 30s)"),
                    );
                    return missing;
                };
                if ms == 0 || ms > MAX_WINDOW_MS {
                    self.err(
                        args[1].pos,
                        "a window must be longer than 0 and at most 24h",
                    );
                    return missing;
                }
                let slot = self.slot(path);
                let w = match self
                    .windows
                    .iter()
                    .position(|w| w.slot == slot && w.dur_ms == ms)
                {
                    Some(i) => i,
                    None => {
                        self.windows.push(WindowSpec {
                            slot,
                            field: path.as_str().into(),
                            dur_ms: ms,
                        });
                        self.windows.len() - 1
                    }
                };
                let agg = match name {
                    "avg" => Agg::Avg,
                    "min" => Agg::Min,
                    "max" => Agg::Max,
                    "sum" => Agg::Sum,
                    _ => Agg::Count,
                };
                (Op::Agg(agg, w as u16), Ty::Num)
            }
            "exists" => {
                if !self.arity(pos, name, args, 1, 1) {
                    return missing;
                }
                let ExprKind::Field(path) = &args[0].kind else {
                    self.err(args[0].pos, "exists() takes an event field");
                    return missing;
                };
                (Op::Exists(self.slot(path)), Ty::Bool)
            }
            "abs" => {
                if !self.arity(pos, name, args, 1, 1) {
                    return missing;
                }
                let (x, t) = self.expr(&args[0]);
                self.want(args[0].pos, "abs()", t, Ty::Num);
                (Op::Abs(Box::new(x)), Ty::Num)
            }
            "contains" | "starts_with" | "ends_with" => {
                if !self.arity(pos, name, args, 2, 2) {
                    return missing;
                }
                let (x, tx) = self.expr(&args[0]);
                let (y, ty) = self.expr(&args[1]);
                self.want(args[0].pos, &format!("{name}()"), tx, Ty::Str);
                self.want(args[1].pos, &format!("{name}()"), ty, Ty::Str);
                let f = match name {
                    "contains" => StrFn::Contains,
                    "starts_with" => StrFn::StartsWith,
                    _ => StrFn::EndsWith,
                };
                (Op::Str(f, Box::new(x), Box::new(y)), Ty::Bool)
            }
            _ => {
                self.err(
                    pos,
                    format!(
                        "unknown function {name}() (known: {})",
                        FUNCTIONS.join(", ")
                    ),
                );
                missing
            }
        }
    }

    /// A string argument of an action: a literal is a template with
    /// `{field}` / `{$var}` / `{topic}` placeholders; anything else is an
    /// expression whose value is used as text.
    fn template(&mut self, e: &Expr) -> Template {
        let ExprKind::Str(text) = &e.kind else {
            let (op, _) = self.expr(e);
            return Template {
                pieces: vec![Piece::Value(op)],
            };
        };
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut rest = text.as_str();
        while let Some(i) = rest.find(['{', '}']) {
            lit.push_str(&rest[..i]);
            let tail = &rest[i..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                lit.push_str(&tail[..1]);
                rest = &tail[2..];
                continue;
            }
            if tail.starts_with('}') {
                self.err(
                    e.pos,
                    "unmatched `}` in template (write `}}` for a literal brace)",
                );
                return Template { pieces };
            }
            let Some(end) = tail.find('}') else {
                self.err(
                    e.pos,
                    "unclosed `{` in template (write `{{` for a literal brace)",
                );
                return Template { pieces };
            };
            let name = tail[1..end].trim();
            let op = if name == "topic" {
                Some(Op::Topic)
            } else if let Some(v) = name.strip_prefix('$') {
                match self.var(v) {
                    Some((i, _)) => Some(Op::Var(i)),
                    None => {
                        self.err(e.pos, format!("template uses ${v}, which is never set"));
                        None
                    }
                }
            } else if is_path(name) {
                Some(Op::Slot(self.slot(name)))
            } else {
                self.err(
                    e.pos,
                    format!("template placeholder {{{name}}} is not a field, $variable or topic"),
                );
                None
            };
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit).into()));
            }
            if let Some(op) = op {
                pieces.push(Piece::Value(op));
            }
            rest = &tail[end + 1..];
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit.into()));
        }
        Template { pieces }
    }

    fn string_arg(&mut self, e: &Expr, what: &str) -> Option<Arc<str>> {
        match &e.kind {
            ExprKind::Str(s) if !s.is_empty() => Some(s.as_str().into()),
            _ => {
                self.err(e.pos, format!("{what} must be a non-empty string literal"));
                None
            }
        }
    }

    fn action(&mut self, a: &ast::Action) -> Option<CAction> {
        let args = &a.args;
        match a.name.as_str() {
            "alert" => self
                .arity(a.pos, "alert", args, 1, 1)
                .then(|| CAction::Alert(self.template(&args[0]))),
            "publish" => {
                if !self.arity(a.pos, "publish", args, 1, 2) {
                    return None;
                }
                if let ExprKind::Str(t) = &args[0].kind
                    && (t.contains(['+', '#']) || t.is_empty())
                {
                    self.err(
                        args[0].pos,
                        "a publish topic must be non-empty and must not contain + or #",
                    );
                }
                let topic = self.template(&args[0]);
                let payload = args.get(1).map(|p| self.template(p));
                Some(CAction::Publish(topic, payload))
            }
            "set" => {
                if !self.arity(a.pos, "set", args, 2, 2) {
                    return None;
                }
                let Some(name) = var_target(&args[0]) else {
                    self.err(
                        args[0].pos,
                        "set() takes a variable name first, e.g. set(level, 3)",
                    );
                    return None;
                };
                let (op, _) = self.expr(&args[1]);
                let (i, _) = self.var(&name)?;
                Some(CAction::Set(i, op))
            }
            "call" => {
                if !self.arity(a.pos, "call", args, 2, 3) {
                    return None;
                }
                let module = self.string_arg(&args[0], "call()'s module name");
                let export = self.string_arg(&args[1], "call()'s export name");
                let payload = args.get(2).map(|p| self.template(p));
                Some(CAction::Call {
                    module: module?,
                    export: export?,
                    payload,
                })
            }
            "modbus_write" => {
                if !self.arity(a.pos, "modbus_write", args, 3, 3) {
                    return None;
                }
                let device = self.string_arg(&args[0], "modbus_write()'s device name");
                let register = match &args[1].kind {
                    ExprKind::Number(n) if n.fract() == 0.0 && (0.0..=65535.0).contains(n) => {
                        Some(*n as u16)
                    }
                    _ => {
                        self.err(
                            args[1].pos,
                            "modbus_write()'s register must be a number literal in 0..=65535",
                        );
                        None
                    }
                };
                let (value, ty) = self.expr(&args[2]);
                if !ty.fits(Ty::Num) && !ty.fits(Ty::Bool) {
                    self.err(
                        args[2].pos,
                        format!(
                            "modbus_write()'s value must be a number, this is a {}",
                            ty.name()
                        ),
                    );
                }
                let (device, register) = (device?, register?);
                self.writes.push(RegisterWrite {
                    device: device.clone(),
                    register,
                    pos: a.pos,
                });
                Some(CAction::ModbusWrite {
                    device,
                    register,
                    value,
                })
            }
            other => {
                self.err(
                    a.pos,
                    format!("unknown action {other}() (known: {})", ACTIONS.join(", ")),
                );
                None
            }
        }
    }
}

fn var_target(e: &Expr) -> Option<String> {
    match &e.kind {
        ExprKind::Var(v) => Some(v.clone()),
        ExprKind::Field(p) if !p.contains('.') => Some(p.clone()),
        _ => None,
    }
}

fn is_path(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// `field <op> number` and `field ==/!= "text"` (either way round) get
/// their own operations: they are most of what edge rules test.
fn specialise(cmp: Cmp, x: Op, y: Op) -> Op {
    let flip = |c: Cmp| match c {
        Cmp::Lt => Cmp::Gt,
        Cmp::Le => Cmp::Ge,
        Cmp::Gt => Cmp::Lt,
        Cmp::Ge => Cmp::Le,
        other => other,
    };
    match (x, y) {
        (Op::Slot(s), Op::Const(Value::Num(n))) => Op::CmpSlotNum(cmp, s, n),
        (Op::Const(Value::Num(n)), Op::Slot(s)) => Op::CmpSlotNum(flip(cmp), s, n),
        (Op::Slot(slot), Op::Const(Value::Str(value)))
        | (Op::Const(Value::Str(value)), Op::Slot(slot))
            if matches!(cmp, Cmp::Eq | Cmp::Ne) =>
        {
            Op::EqSlotStr {
                slot,
                negate: cmp == Cmp::Ne,
                value,
            }
        }
        (x, y) => Op::Cmp(cmp, Box::new(x), Box::new(y)),
    }
}

impl Compiled {
    /// Event fields the set reads, by slot.
    pub fn fields(&self) -> &[Arc<str>] {
        &self.fields
    }

    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| &*r.name)
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// MQTT topic filters the set wants: its `SUBSCRIBE`s and the literal
    /// filters of its `topic ~ "..."` tests.
    pub fn subscriptions(&self) -> &[TopicFilter] {
        &self.subscriptions
    }

    /// The set's `modbus_write` actions.
    pub fn register_writes(&self) -> &[RegisterWrite] {
        &self.writes
    }

    /// Refuses the set when one of its `modbus_write`s names a register
    /// that `writable` does not allow (it says why); every such write is
    /// reported at its position.
    pub fn check_writes(
        &self,
        writable: impl Fn(&str, u16) -> Result<(), String>,
    ) -> Result<(), RulesError> {
        let errors: Vec<Diagnostic> = self
            .writes
            .iter()
            .filter_map(|w| {
                writable(&w.device, w.register)
                    .err()
                    .map(|why| Diagnostic::new(w.pos, why))
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(RulesError(errors))
        }
    }

    /// The slot a field is decoded into, if the set reads it.
    pub fn slot_of(&self, path: &str) -> Option<usize> {
        self.fields.iter().position(|f| &**f == path)
    }

    /// A fresh state: no variables set, empty windows.
    pub fn new_state(&self) -> State {
        State {
            vars: vec![Value::Missing; self.vars.len()],
            windows: vec![Window::default(); self.windows.len()],
            last_fired: vec![None; self.rules.len()],
        }
    }

    /// The state for this set, carried over from `old` (the state of the
    /// set it replaces): variables by name, windows by field and length,
    /// rate limits by rule name. A hot swap does not forget what happened.
    pub fn migrate_state(&self, old_set: &Compiled, mut old: State) -> State {
        let mut new = self.new_state();
        for (i, name) in self.vars.iter().enumerate() {
            if let Some(j) = old_set.vars.iter().position(|n| n == name) {
                new.vars[i] = std::mem::take(&mut old.vars[j]);
            }
        }
        for (i, spec) in self.windows.iter().enumerate() {
            if let Some(j) = old_set
                .windows
                .iter()
                .position(|w| w.field == spec.field && w.dur_ms == spec.dur_ms)
            {
                new.windows[i] = std::mem::take(&mut old.windows[j]);
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if let Some(j) = old_set.rules.iter().position(|r| r.name == rule.name) {
                new.last_fired[i] = old.last_fired[j];
            }
        }
        new
    }

    /// Evaluates every rule, in order, against one event. Returns how many
    /// rules fired; their actions are appended to `out`.
    pub fn eval(&self, state: &mut State, event: &Event, out: &mut Vec<Output>) -> usize {
        state.observe(&self.windows, event);
        let mut fired = 0;
        for (i, rule) in self.rules.iter().enumerate() {
            fired += usize::from(rule.run(i, event, state, out));
        }
        fired
    }
}

impl Compiled {
    /// Decodes a JSON object payload into `event.slots` (reset first). On
    /// error every slot is left missing, so rules over `topic` still work
    /// for payloads that are not JSON (binary frames for a WASM decoder).
    pub fn decode_into(&self, payload: &[u8], event: &mut Event) -> Result<(), DecodeError> {
        self.trie.decode_into(self.fields.len(), payload, event)
    }

    /// An event for this set from a topic and a JSON payload.
    pub fn decode(&self, topic: &str, time_ms: u64, payload: &[u8]) -> Result<Event, DecodeError> {
        let mut event = Event {
            topic: topic.into(),
            time_ms,
            slots: Vec::new(),
            payload: payload.into(),
        };
        self.decode_into(payload, &mut event)?;
        Ok(event)
    }
}
