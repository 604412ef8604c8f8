//! Properties of the parser and the evaluator (proptest).

use iot_core::{Offset, PartitionId, Record, StoredRecord, Timestamp};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::ast::{BinOp, Expr, FUNCTIONS, Root, Step};
use super::eval::Scope;
use super::message::MessageView;
use super::parser::{number, parse};

const KEYWORDS: [&str; 7] = ["true", "false", "null", "undefined", "and", "or", "not"];

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_]{0,6}".prop_filter("not a keyword", |n| {
        !KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(n))
    })
}

fn constant() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        (0u32..1_000_000).prop_map(|n| number(f64::from(n))),
        (0.0f64..1e6).prop_map(number),
        (0.0f64..1e300).prop_map(number),
        "[a-z '\\\\\"é\\n]{0,8}".prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ];
    let element = prop_oneof![
        (-1000i32..1000).prop_map(|n| number(f64::from(n))),
        "[a-z']{0,4}".prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool),
    ];
    prop_oneof![
        4 => scalar,
        1 => prop::collection::vec(element, 0..4).prop_map(Value::Array),
    ]
}

fn path() -> impl Strategy<Value = Expr> {
    let root = prop_oneof![
        name().prop_map(Root::App),
        name()
            .prop_filter("not $body or $twin", |n| {
                !n.eq_ignore_ascii_case("body") && !n.eq_ignore_ascii_case("twin")
            })
            .prop_map(Root::System),
        Just(Root::Body),
        Just(Root::Twin),
    ];
    let step = prop_oneof![
        "[a-zA-Z_][a-zA-Z0-9_]{0,5}".prop_map(Step::Field),
        (0usize..100).prop_map(Step::Index),
    ];
    (root, prop::collection::vec(step, 0..4)).prop_map(|(r, s)| Expr::Path(r, s))
}

fn expr() -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![
        constant().prop_map(Expr::Const),
        Just(Expr::Undefined),
        path(),
    ];
    leaf.prop_recursive(5, 48, 4, |inner| {
        let op = prop_oneof![
            Just(BinOp::Or),
            Just(BinOp::And),
            Just(BinOp::Eq),
            Just(BinOp::NotEq),
            Just(BinOp::Lt),
            Just(BinOp::LtEq),
            Just(BinOp::Gt),
            Just(BinOp::GtEq),
            Just(BinOp::Add),
            Just(BinOp::Sub),
            Just(BinOp::Mul),
            Just(BinOp::Div),
            Just(BinOp::Mod),
        ];
        let call = (0..FUNCTIONS.len(), prop::collection::vec(inner.clone(), 4)).prop_map(
            |(i, mut args)| {
                let (func, _, min, max) = FUNCTIONS[i];
                args.truncate(max.min(min + 1));
                Expr::Call(func, args)
            },
        );
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            inner.clone().prop_map(|e| Expr::Neg(Box::new(e))),
            (op, inner.clone(), inner).prop_map(|(op, a, b)| Expr::Binary(
                op,
                Box::new(a),
                Box::new(b)
            )),
            call,
        ]
    })
}

fn record(body: &Value) -> StoredRecord {
    StoredRecord::new(
        PartitionId(0),
        Offset(0),
        Timestamp::from_unix_millis(0),
        Record::new("d", body.to_string())
            .with_header("content-type", "application/json")
            .with_header("content-encoding", "utf-8"),
    )
}

fn eval(text: &str, body: &Value) -> Option<Value> {
    let expr = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    let stored = record(body);
    let message = MessageView::new(&stored);
    expr.eval(&Scope {
        message: &message,
        twin: None,
    })
    .map(super::eval::V::into_owned)
}

/// Kleene's three-valued logic, which IoT Hub's AND, OR and NOT follow with undefined as
/// "unknown".
#[derive(Clone, Debug)]
enum Logic {
    Leaf(Option<bool>),
    Not(Box<Logic>),
    And(Box<Logic>, Box<Logic>),
    Or(Box<Logic>, Box<Logic>),
}

impl Logic {
    fn text(&self) -> String {
        match self {
            Logic::Leaf(Some(b)) => b.to_string(),
            Logic::Leaf(None) => "$body.missing".to_owned(),
            Logic::Not(a) => format!("NOT ({})", a.text()),
            Logic::And(a, b) => format!("({}) AND ({})", a.text(), b.text()),
            Logic::Or(a, b) => format!("({}) OR ({})", a.text(), b.text()),
        }
    }

    fn reference(&self) -> Option<bool> {
        match self {
            Logic::Leaf(v) => *v,
            Logic::Not(a) => a.reference().map(|b| !b),
            Logic::And(a, b) => match (a.reference(), b.reference()) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Logic::Or(a, b) => match (a.reference(), b.reference()) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
        }
    }
}

fn logic() -> impl Strategy<Value = Logic> {
    prop_oneof![Just(Some(true)), Just(Some(false)), Just(None)]
        .prop_map(Logic::Leaf)
        .prop_recursive(5, 32, 2, |inner| {
            prop_oneof![
                inner.clone().prop_map(|a| Logic::Not(Box::new(a))),
                (inner.clone(), inner.clone())
                    .prop_map(|(a, b)| Logic::And(Box::new(a), Box::new(b))),
                (inner.clone(), inner).prop_map(|(a, b)| Logic::Or(Box::new(a), Box::new(b))),
            ]
        })
}

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        (-1000i32..1000).prop_map(f64::from),
        -1e6f64..1e6,
        Just(0.0),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn printing_parses_back_to_the_same_tree(e in expr()) {
        let text = e.to_string();
        let parsed = parse(&text).unwrap_or_else(|err| panic!("{text}: {err}"));
        prop_assert_eq!(parsed, e, "{}", text);
    }

    #[test]
    fn arithmetic_and_comparison_match_f64(a in finite(), b in finite(), op in 0usize..11) {
        let symbols = ["+", "-", "*", "/", "%", "=", "!=", "<", "<=", ">", ">="];
        let body = json!({"a": a, "b": b});
        let got = eval(&format!("$body.a {} $body.b", symbols[op]), &body);
        let arith = |x: f64| serde_json::Number::from_f64(x).map(Value::Number);
        let expected = match op {
            0 => arith(a + b),
            1 => arith(a - b),
            2 => arith(a * b),
            3 => arith(a / b),
            4 => arith(a % b),
            5 => Some(Value::Bool(a == b)),
            6 => Some(Value::Bool(a != b)),
            7 => Some(Value::Bool(a < b)),
            8 => Some(Value::Bool(a <= b)),
            9 => Some(Value::Bool(a > b)),
            _ => Some(Value::Bool(a >= b)),
        };
        let same = match (&got, &expected) {
            (Some(Value::Number(x)), Some(Value::Number(y))) => x.as_f64() == y.as_f64(),
            _ => got == expected,
        };
        prop_assert!(same, "{} {} {}: got {:?}, expected {:?}", a, symbols[op], b, got, expected);
    }

    #[test]
    fn comparing_across_types_is_undefined(a in finite(), s in "[a-z0-9]{0,5}", op in 0usize..6) {
        let symbols = ["=", "!=", "<", "<=", ">", ">="];
        let body = json!({"a": a, "s": s});
        prop_assert_eq!(eval(&format!("$body.a {} $body.s", symbols[op]), &body), None);
        prop_assert_eq!(eval(&format!("$body.s {} $body.missing", symbols[op]), &body), None);
    }

    #[test]
    fn and_or_not_follow_three_valued_logic(l in logic()) {
        let got = eval(&l.text(), &json!({}));
        prop_assert_eq!(got, l.reference().map(Value::Bool), "{}", l.text());
    }

    #[test]
    fn a_body_number_equals_the_same_number_written_in_the_condition(x in any::<f64>()) {
        prop_assume!(x.is_finite());
        let body = json!({"x": x});
        let literal = if x < 0.0 { format!("-{}", -x) } else { format!("{x}") };
        prop_assert_eq!(
            eval(&format!("$body.x = {literal}"), &body),
            Some(Value::Bool(true)),
            "{}", literal
        );
    }
}
