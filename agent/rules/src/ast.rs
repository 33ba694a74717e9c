//! The syntax tree of a rule set, and its canonical printed form.
//!
//! `Display` prints a tree so that parsing the text gives the same tree back
//! (every compound expression is parenthesised); `ferry rules check --print`
//! shows it, and the property tests hold the parser to it.

use std::fmt;

/// A position in the source, 1-based.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSet {
    pub fields: Vec<FieldDecl>,
    pub subscriptions: Vec<Subscription>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Number,
    String,
    Bool,
}

impl Type {
    pub fn as_str(self) -> &'static str {
        match self {
            Type::Number => "number",
            Type::String => "string",
            Type::Bool => "bool",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FieldDecl {
    pub path: String,
    pub ty: Type,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub struct Subscription {
    pub filter: String,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: Option<String>,
    pub condition: Expr,
    pub actions: Vec<Action>,
    /// `EVERY d`: the rule's actions run at most once per `d` (milliseconds).
    pub every_ms: Option<u64>,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub struct Action {
    pub name: String,
    pub args: Vec<Expr>,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub struct Expr {
    pub kind: ExprKind,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    Number(f64),
    Str(String),
    Bool(bool),
    /// Milliseconds; only meaningful as the length of a window.
    Duration(u64),
    /// An event field, dotted for nested objects (`sensor.id`).
    Field(String),
    /// A variable written by `set` (`$name`).
    Var(String),
    /// The event's topic.
    Topic,
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Call(String, Vec<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    Not,
    Neg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Matches,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl BinOp {
    pub fn as_str(self) -> &'static str {
        match self {
            BinOp::Or => "or",
            BinOp::And => "and",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Matches => "~",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        }
    }
}

// Positions are where a construct was written, not part of what it means:
// two trees are equal when they say the same thing.
impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
    }
}
impl PartialEq for Action {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.args == other.args
    }
}
impl PartialEq for Rule {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.condition == other.condition
            && self.actions == other.actions
            && self.every_ms == other.every_ms
    }
}
impl PartialEq for FieldDecl {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.ty == other.ty
    }
}
impl PartialEq for Subscription {
    fn eq(&self, other: &Self) -> bool {
        self.filter == other.filter
    }
}

/// Writes a string literal with the escapes the grammar knows.
pub fn write_string(f: &mut impl fmt::Write, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

pub fn format_duration(ms: u64) -> String {
    if ms > 0 && ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms > 0 && ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms > 0 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            // `{:?}` keeps a fraction or exponent that `{}` would spell out
            // as a long run of digits; both parse back to the same f64.
            ExprKind::Number(n) => write!(f, "{n:?}"),
            ExprKind::Str(s) => write_string(f, s),
            ExprKind::Bool(b) => write!(f, "{b}"),
            ExprKind::Duration(ms) => f.write_str(&format_duration(*ms)),
            ExprKind::Field(p) => f.write_str(p),
            ExprKind::Var(v) => write!(f, "${v}"),
            ExprKind::Topic => f.write_str("topic"),
            ExprKind::Unary(UnOp::Not, e) => write!(f, "(not {e})"),
            ExprKind::Unary(UnOp::Neg, e) => write!(f, "(-{e})"),
            ExprKind::Binary(op, a, b) => write!(f, "({a} {} {b})", op.as_str()),
            ExprKind::Call(name, args) => {
                write!(f, "{name}(")?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str(")")
            }
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(", self.name)?;
        for (i, a) in self.args.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{a}")?;
        }
        f.write_str(")")
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = &self.name {
            writeln!(f, "RULE {name}")?;
        }
        write!(f, "ON {}\nTHEN ", self.condition)?;
        for (i, a) in self.actions.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{a}")?;
        }
        if let Some(ms) = self.every_ms {
            write!(f, "\nEVERY {}", format_duration(ms))?;
        }
        Ok(())
    }
}

impl fmt::Display for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.fields {
            writeln!(f, "FIELD {}: {}", d.path, d.ty.as_str())?;
        }
        for s in &self.subscriptions {
            f.write_str("SUBSCRIBE ")?;
            write_string(f, &s.filter)?;
            f.write_str("\n")?;
        }
        for r in &self.rules {
            writeln!(f, "\n{r}")?;
        }
        Ok(())
    }
}
