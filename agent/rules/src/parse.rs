//! Text → syntax tree, with `line:col` errors.

use pest::Parser as _;
use pest::error::{ErrorVariant, LineColLocation};
use pest::iterators::{Pair, Pairs};
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest_derive::Parser;

use crate::ast::{
    Action, BinOp, Expr, ExprKind, FieldDecl, Pos, Rule as RuleAst, RuleSet, Subscription, Type,
    UnOp,
};
use crate::error::Diagnostic;

#[derive(Parser)]
#[grammar = "rules.pest"]
struct Grammar;

/// Rule sets larger than this are refused before parsing (they are read
/// from signed content, but a bound keeps a mistake from exhausting memory).
pub const MAX_SOURCE_BYTES: usize = 4 << 20;

pub fn parse(source: &str) -> Result<RuleSet, Diagnostic> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(Diagnostic::new(
            Pos { line: 1, col: 1 },
            format!(
                "rule set is {} bytes; the limit is {MAX_SOURCE_BYTES}",
                source.len()
            ),
        ));
    }
    check_brackets(source)?;
    let _index = IndexGuard::install(source);
    let mut pairs = Grammar::parse(Rule::ruleset, source).map_err(syntax_error)?;
    check_depth(pairs.clone())?;
    let top = pairs.next().map(|p| p.into_inner());
    let mut set = RuleSet::default();
    for pair in top.into_iter().flatten() {
        match pair.as_rule() {
            Rule::field_decl => {
                let pos = pos_of(&pair);
                let mut inner = pair.into_inner();
                let path = next_str(&mut inner);
                let ty = match next_str(&mut inner).as_str() {
                    "number" => Type::Number,
                    "string" => Type::String,
                    _ => Type::Bool,
                };
                set.fields.push(FieldDecl { path, ty, pos });
            }
            Rule::subscribe => {
                let pos = pos_of(&pair);
                let filter = match pair.into_inner().next() {
                    Some(s) => unescape(s),
                    None => String::new(),
                };
                set.subscriptions.push(Subscription { filter, pos });
            }
            Rule::rule => set.rules.push(rule(pair)?),
            _ => {} // EOI
        }
    }
    Ok(set)
}

/// Brackets nest at most this deep (the generated parser recurses per level).
pub const MAX_BRACKETS: u32 = 32;
/// A syntax tree is at most this deep (compiling and evaluating recurse).
pub const MAX_DEPTH: usize = 256;

/// Refuses deeply nested brackets before the parser recurses into them.
fn check_brackets(source: &str) -> Result<(), Diagnostic> {
    let (mut depth, mut line, mut col) = (0u32, 1u32, 0u32);
    let (mut in_string, mut escaped, mut in_comment) = (false, false, false);
    let mut prev = '\0';
    for c in source.chars() {
        col += 1;
        if c == '\n' {
            (line, col, in_comment) = (line + 1, 0, false);
        } else if in_comment {
        } else if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if c == '#' || (c == '/' && prev == '/') {
            in_comment = true;
        } else if c == '(' {
            depth += 1;
            if depth > MAX_BRACKETS {
                return Err(Diagnostic::new(
                    Pos { line, col },
                    format!("brackets nest more than {MAX_BRACKETS} deep"),
                ));
            }
        } else if c == ')' {
            depth = depth.saturating_sub(1);
        }
        prev = c;
    }
    Ok(())
}

/// Refuses expressions whose tree would be deeper than [`MAX_DEPTH`]: each
/// operator of an expression may add a level, and so may each nesting.
/// Walks the parse tree with an explicit stack, not by recursion.
fn check_depth(pairs: Pairs<'_, Rule>) -> Result<(), Diagnostic> {
    let mut stack: Vec<(Pair<'_, Rule>, usize)> = pairs.map(|p| (p, 0)).collect();
    while let Some((pair, depth)) = stack.pop() {
        let mut depth = depth;
        if pair.as_rule() == Rule::expr {
            let ops = pair
                .clone()
                .into_inner()
                .filter(|p| {
                    !matches!(
                        p.as_rule(),
                        Rule::expr
                            | Rule::call
                            | Rule::number
                            | Rule::string
                            | Rule::boolean
                            | Rule::duration
                            | Rule::var
                            | Rule::topic
                            | Rule::path
                    )
                })
                .count();
            depth += ops + 1;
            if depth > MAX_DEPTH {
                return Err(Diagnostic::new(
                    pos_of(&pair),
                    format!("expression nests more than {MAX_DEPTH} operators deep"),
                ));
            }
        }
        stack.extend(pair.into_inner().map(|p| (p, depth)));
    }
    Ok(())
}

fn next_str(inner: &mut Pairs<'_, Rule>) -> String {
    inner
        .next()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default()
}

fn pos_of(pair: &Pair<'_, Rule>) -> Pos {
    let span = pair.as_span();
    let found = LINE_INDEX.with(|li| {
        li.borrow()
            .as_ref()
            .and_then(|li| li.pos(span.get_input(), span.start()))
    });
    found.unwrap_or_else(|| {
        let (line, col) = pair.line_col();
        Pos {
            line: line as u32,
            col: col as u32,
        }
    })
}

thread_local! {
    /// The line index of the source `parse` is working on.
    static LINE_INDEX: std::cell::RefCell<Option<LineIndex>> = const { std::cell::RefCell::new(None) };
}

/// Byte offset → `line:col` in O(log lines + STEP), whatever the line
/// length. (pest's `line_col` counts from the start of the line each time,
/// so a long one-line rule set took quadratic time: 79 s for 4 MiB.)
struct LineIndex {
    input: (usize, usize),
    line_starts: Vec<usize>,
    /// Characters before byte `k * STEP`.
    chars_at: Vec<usize>,
}

const STEP: usize = 256;

/// Characters in `bytes` (UTF-8: every byte that does not continue one).
fn chars_in(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b & 0xC0 != 0x80).count()
}

impl LineIndex {
    fn new(src: &str) -> LineIndex {
        let b = src.as_bytes();
        let mut line_starts = vec![0];
        line_starts.extend(
            b.iter()
                .enumerate()
                .filter(|(_, c)| **c == b'\n')
                .map(|(i, _)| i + 1),
        );
        let mut chars_at = Vec::with_capacity(b.len() / STEP + 1);
        let mut n = 0;
        for chunk in b.chunks(STEP) {
            chars_at.push(n);
            n += chars_in(chunk);
        }
        chars_at.push(n);
        LineIndex {
            input: (src.as_ptr() as usize, src.len()),
            line_starts,
            chars_at,
        }
    }

    fn chars_before(&self, b: &[u8], at: usize) -> usize {
        let k = at / STEP;
        self.chars_at[k] + chars_in(&b[k * STEP..at])
    }

    fn pos(&self, input: &str, at: usize) -> Option<Pos> {
        if (input.as_ptr() as usize, input.len()) != self.input || at > input.len() {
            return None;
        }
        let b = input.as_bytes();
        let line = self.line_starts.partition_point(|&s| s <= at);
        let start = self.line_starts[line - 1];
        let col = self.chars_before(b, at) - self.chars_before(b, start) + 1;
        Some(Pos {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            col: u32::try_from(col).unwrap_or(u32::MAX),
        })
    }
}

/// Installs the line index of a source for the duration of a parse.
struct IndexGuard;

impl IndexGuard {
    fn install(src: &str) -> IndexGuard {
        LINE_INDEX.with(|li| *li.borrow_mut() = Some(LineIndex::new(src)));
        IndexGuard
    }
}

impl Drop for IndexGuard {
    fn drop(&mut self) {
        LINE_INDEX.with(|li| *li.borrow_mut() = None);
    }
}

fn rule(pair: Pair<'_, Rule>) -> Result<RuleAst, Diagnostic> {
    let pos = pos_of(&pair);
    let mut name = None;
    let mut condition = None;
    let mut actions = Vec::new();
    let mut every_ms = None;
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::rule_name => name = p.into_inner().next().map(|n| n.as_str().to_owned()),
            Rule::expr => condition = Some(expr(p)?),
            Rule::action => {
                let pos = pos_of(&p);
                let mut inner = p.into_inner();
                let name = next_str(&mut inner);
                let args = inner.map(expr).collect::<Result<_, _>>()?;
                actions.push(Action { name, args, pos });
            }
            Rule::every => {
                if let Some(d) = p.into_inner().next() {
                    every_ms = Some(duration(&d)?);
                }
            }
            _ => {}
        }
    }
    let condition = condition.ok_or_else(|| Diagnostic::new(pos, "rule has no condition"))?;
    Ok(RuleAst {
        name,
        condition,
        actions,
        every_ms,
        pos,
    })
}

fn pratt() -> &'static PrattParser<Rule> {
    static PRATT: std::sync::OnceLock<PrattParser<Rule>> = std::sync::OnceLock::new();
    PRATT.get_or_init(|| {
        PrattParser::new()
            .op(Op::infix(Rule::or, Assoc::Left))
            .op(Op::infix(Rule::and, Assoc::Left))
            .op(Op::prefix(Rule::not))
            .op(Op::infix(Rule::eq, Assoc::Left)
                | Op::infix(Rule::ne, Assoc::Left)
                | Op::infix(Rule::lt, Assoc::Left)
                | Op::infix(Rule::le, Assoc::Left)
                | Op::infix(Rule::gt, Assoc::Left)
                | Op::infix(Rule::ge, Assoc::Left)
                | Op::infix(Rule::matches, Assoc::Left))
            .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
            .op(Op::infix(Rule::mul, Assoc::Left)
                | Op::infix(Rule::div, Assoc::Left)
                | Op::infix(Rule::rem, Assoc::Left))
            .op(Op::prefix(Rule::neg))
    })
}

fn expr(pair: Pair<'_, Rule>) -> Result<Expr, Diagnostic> {
    pratt()
        .map_primary(primary)
        .map_prefix(|op, rhs| {
            let pos = pos_of(&op);
            let op = if op.as_rule() == Rule::not {
                UnOp::Not
            } else {
                UnOp::Neg
            };
            Ok(Expr {
                kind: ExprKind::Unary(op, Box::new(rhs?)),
                pos,
            })
        })
        .map_infix(|lhs, op, rhs| {
            let lhs = lhs?;
            let pos = lhs.pos;
            let op = match op.as_rule() {
                Rule::or => BinOp::Or,
                Rule::and => BinOp::And,
                Rule::eq => BinOp::Eq,
                Rule::ne => BinOp::Ne,
                Rule::lt => BinOp::Lt,
                Rule::le => BinOp::Le,
                Rule::gt => BinOp::Gt,
                Rule::ge => BinOp::Ge,
                Rule::matches => BinOp::Matches,
                Rule::add => BinOp::Add,
                Rule::sub => BinOp::Sub,
                Rule::mul => BinOp::Mul,
                Rule::div => BinOp::Div,
                _ => BinOp::Rem,
            };
            Ok(Expr {
                kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs?)),
                pos,
            })
        })
        .parse(pair.into_inner())
}

fn primary(pair: Pair<'_, Rule>) -> Result<Expr, Diagnostic> {
    let pos = pos_of(&pair);
    let kind = match pair.as_rule() {
        Rule::expr => return expr(pair),
        Rule::number => {
            let n: f64 = pair
                .as_str()
                .parse()
                .map_err(|e| Diagnostic::new(pos, format!("number {}: {e}", pair.as_str())))?;
            if !n.is_finite() {
                return Err(Diagnostic::new(
                    pos,
                    format!("number {} is out of range", pair.as_str()),
                ));
            }
            ExprKind::Number(n)
        }
        Rule::string => ExprKind::Str(unescape(pair)),
        Rule::boolean => ExprKind::Bool(pair.as_str() == "true"),
        Rule::duration => ExprKind::Duration(duration(&pair)?),
        Rule::var => ExprKind::Var(pair.as_str()[1..].to_owned()),
        Rule::topic => ExprKind::Topic,
        Rule::path => ExprKind::Field(pair.as_str().to_owned()),
        Rule::call => {
            let mut inner = pair.into_inner();
            let name = next_str(&mut inner);
            let args = inner.map(expr);
            ExprKind::Call(name, args.collect::<Result<_, _>>()?)
        }
        other => return Err(Diagnostic::new(pos, format!("unexpected {other:?}"))),
    };
    Ok(Expr { kind, pos })
}

fn duration(pair: &Pair<'_, Rule>) -> Result<u64, Diagnostic> {
    let text = pair.as_str();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let scale = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        _ => 3_600_000,
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| Diagnostic::new(pos_of(pair), format!("duration {text} is out of range")))
}

fn unescape(pair: Pair<'_, Rule>) -> String {
    let raw = pair.into_inner().next().map(|p| p.as_str()).unwrap_or("");
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A pest error as a `line:col` diagnostic whose message says what was
/// expected in words a rule author knows.
fn syntax_error(e: pest::error::Error<Rule>) -> Diagnostic {
    let (line, col) = match e.line_col {
        LineColLocation::Pos(p) | LineColLocation::Span(p, _) => p,
    };
    let found = e.line().trim_end();
    let message = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().map(describe).collect();
            names.sort_unstable();
            names.dedup();
            match names.as_slice() {
                [] => "syntax error".to_owned(),
                [one] => format!("expected {one}"),
                more => format!("expected one of: {}", more.join(", ")),
            }
        }
        ErrorVariant::CustomError { message } => message.clone(),
    };
    let mut d = Diagnostic::new(
        Pos {
            line: line as u32,
            col: col as u32,
        },
        message,
    );
    d.source_line = Some(found.to_owned());
    d
}

fn describe(which: &Rule) -> &'static str {
    match which {
        Rule::EOI => "end of input",
        Rule::field_decl => "FIELD",
        Rule::subscribe => "SUBSCRIBE",
        Rule::rule | Rule::rule_name => "a rule (RULE name / ON condition)",
        Rule::every => "EVERY <duration>",
        Rule::action => "an action (alert, publish, set, call)",
        Rule::expr | Rule::prefix | Rule::not | Rule::neg => "an expression",
        Rule::or | Rule::and => "`and`/`or`",
        Rule::eq | Rule::ne | Rule::lt | Rule::le | Rule::gt | Rule::ge | Rule::matches => {
            "a comparison (== != < <= > >= ~)"
        }
        Rule::add | Rule::sub | Rule::mul | Rule::div | Rule::rem => "an operator (+ - * / %)",
        Rule::duration => "a duration (e.g. 30s, 500ms, 5m, 1h)",
        Rule::number => "a number",
        Rule::string | Rule::inner => "a string in double quotes",
        Rule::type_name => "a type (number, string, bool)",
        Rule::ident | Rule::name | Rule::path | Rule::call => "a name",
        Rule::var => "a variable ($name)",
        Rule::boolean => "true/false",
        Rule::topic => "topic",
        _ => "something else",
    }
}
