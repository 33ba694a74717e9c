//! Property tests: the parser never panics, and printing a tree then
//! parsing the text gives the same tree back.

use ferry_rules::ast::{
    Action, BinOp, Expr, ExprKind, FieldDecl, Pos, Rule, RuleSet, Subscription, Type, UnOp,
};
use proptest::prelude::*;

fn e(kind: ExprKind) -> Expr {
    Expr {
        kind,
        pos: Pos::default(),
    }
}

fn ident() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_]{0,6}".prop_filter("not a keyword", |s| {
        !matches!(
            s.as_str(),
            "and" | "or" | "not" | "then" | "every" | "on" | "rule" | "true" | "false" | "topic"
        )
    })
}

fn leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        (0u32..100_000, 0u32..4)
            .prop_map(|(n, scale)| e(ExprKind::Number(f64::from(n) / 10f64.powi(scale as i32)))),
        any::<f64>()
            .prop_filter("finite, non-negative", |n| n.is_finite()
                && n.is_sign_positive())
            .prop_map(|n| e(ExprKind::Number(n))),
        "[ -~\n\t]{0,8}".prop_map(|s| e(ExprKind::Str(s))),
        any::<bool>().prop_map(|b| e(ExprKind::Bool(b))),
        (1u64..100_000).prop_map(|ms| e(ExprKind::Duration(ms))),
        prop::collection::vec(ident(), 1..3).prop_map(|p| e(ExprKind::Field(p.join(".")))),
        ident().prop_map(|v| e(ExprKind::Var(v))),
        Just(e(ExprKind::Topic)),
    ]
}

fn binop() -> impl Strategy<Value = BinOp> {
    prop::sample::select(vec![
        BinOp::Or,
        BinOp::And,
        BinOp::Eq,
        BinOp::Ne,
        BinOp::Lt,
        BinOp::Le,
        BinOp::Gt,
        BinOp::Ge,
        BinOp::Matches,
        BinOp::Add,
        BinOp::Sub,
        BinOp::Mul,
        BinOp::Div,
        BinOp::Rem,
    ])
}

fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(5, 48, 3, |inner| {
        prop_oneof![
            (
                prop::sample::select(vec![UnOp::Not, UnOp::Neg]),
                inner.clone()
            )
                .prop_map(|(op, a)| e(ExprKind::Unary(op, Box::new(a)))),
            (binop(), inner.clone(), inner.clone()).prop_map(|(op, a, b)| e(ExprKind::Binary(
                op,
                Box::new(a),
                Box::new(b)
            ))),
            (ident(), prop::collection::vec(inner, 0..3))
                .prop_map(|(f, args)| e(ExprKind::Call(f, args))),
        ]
    })
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        proptest::option::of("[a-z][a-z0-9_-]{0,8}"),
        expr(),
        prop::collection::vec((ident(), prop::collection::vec(expr(), 0..3)), 1..3),
        proptest::option::of(1u64..10_000_000),
    )
        .prop_map(|(name, condition, actions, every_ms)| Rule {
            name,
            condition,
            actions: actions
                .into_iter()
                .map(|(name, args)| Action {
                    name,
                    args,
                    pos: Pos::default(),
                })
                .collect(),
            every_ms,
            pos: Pos::default(),
        })
}

fn ruleset() -> impl Strategy<Value = RuleSet> {
    (
        prop::collection::vec(
            (
                prop::collection::vec(ident(), 1..3),
                prop::sample::select(vec![Type::Number, Type::String, Type::Bool]),
            ),
            0..3,
        ),
        prop::collection::vec("[a-z/+#]{1,10}", 0..2),
        prop::collection::vec(rule(), 0..4),
    )
        .prop_map(|(fields, subs, rules)| RuleSet {
            fields: fields
                .into_iter()
                .map(|(p, ty)| FieldDecl {
                    path: p.join("."),
                    ty,
                    pos: Pos::default(),
                })
                .collect(),
            subscriptions: subs
                .into_iter()
                .map(|filter| Subscription {
                    filter,
                    pos: Pos::default(),
                })
                .collect(),
            rules,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn printing_then_parsing_gives_the_same_tree(set in ruleset()) {
        let text = set.to_string();
        let parsed = ferry_rules::parse(&text).map_err(|d| TestCaseError::fail(format!("{d}\n{text}")))?;
        prop_assert_eq!(&parsed, &set, "{}", text);
        prop_assert_eq!(parsed.to_string(), text);
    }

    #[test]
    fn the_parser_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        let _ = ferry_rules::compile_source(&text);
    }

    #[test]
    fn the_parser_never_panics_on_rule_shaped_text(
        parts in prop::collection::vec(prop::sample::select(vec![
            "ON", "THEN", "EVERY", "RULE", "FIELD", "SUBSCRIBE", "and", "or", "not", "(", ")", ",",
            "x", "a.b", "$v", "topic", "1", "2.5", "30s", "\"s\"", "\"{x}\"", "\"{\"", "==", "<", "~",
            "+", "-", "*", "/", "%", "avg(", "count(", "alert(", "publish(", "set(", "call(", ":", "number",
        ]), 0..40)
    ) {
        let text = parts.join(" ");
        if let Err(e) = ferry_rules::compile_source(&text) {
            // Every refusal points into the text.
            for d in &e.0 {
                prop_assert!(d.pos.line >= 1 && d.pos.col >= 1, "{}", d);
            }
        }
    }
}

#[test]
fn deeply_nested_input_is_an_error_not_a_stack_overflow() {
    let deep = |text: String| match ferry_rules::compile_source(&text) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    let e = deep(format!(
        "ON {}x{} THEN alert(\"x\")",
        "(".repeat(100_000),
        ")".repeat(100_000)
    ));
    assert_eq!(e, "1:36: brackets nest more than 32 deep");
    let e = deep(format!(
        "ON {}x > 1 THEN alert(\"x\")",
        "not ".repeat(100_000)
    ));
    assert!(e.starts_with("1:4: expression nests more than 256"), "{e}");
    let e = deep(format!(
        "ON x{} > 1 THEN alert(\"x\")",
        " + x".repeat(100_000)
    ));
    assert!(e.starts_with("1:4: expression nests more than 256"), "{e}");
    // Nesting within the limits is fine.
    let ok = format!(
        "ON {}x{} > 1 THEN alert(\"x\")",
        "(".repeat(30),
        ")".repeat(30)
    );
    assert!(ferry_rules::compile_source(&ok).is_ok());
}
