//! Properties of the parser and the evaluator (proptest).

use iot_core::{Offset, PartitionId, Record, StoredRecord, Timestamp};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::ast::{BinOp, Expr, FUNCTIONS, Root, Step};
use super::compiled::Test;
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
        name().prop_map(|n| Root::App(n.into())),
        name()
            .prop_filter("not $body or $twin", |n| {
                !n.eq_ignore_ascii_case("body") && !n.eq_ignore_ascii_case("twin")
            })
            .prop_map(|n| Root::System(n.into())),
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
    expr_of(path().boxed())
}

/// Expressions whose paths are `paths`.
fn expr_of(paths: BoxedStrategy<Expr>) -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![
        constant().prop_map(Expr::Const),
        Just(Expr::Undefined),
        paths,
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
        // The compiled form too.
        let condition = super::Condition::parse(&l.text()).expect("parses");
        let stored = record(&json!({}));
        prop_assert_eq!(condition.evaluate(&MessageView::new(&stored), None), l.reference());
    }

    #[test]
    fn lower_and_upper_match_the_standard_library(text in "[a-zA-Z0-9 \u{1c4}-\u{1c6}\u{130}ß]{0,6}") {
        let body = json!({ "s": text });
        prop_assert_eq!(eval("LOWER($body.s)", &body), Some(Value::String(text.to_lowercase())));
        prop_assert_eq!(eval("UPPER($body.s)", &body), Some(Value::String(text.to_uppercase())));
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

/// A member value as a body may write it: inside and outside what the fast scan reads.
fn body_value() -> impl Strategy<Value = String> {
    prop_oneof![
        // Integers the fast scan reads, and the edges it leaves to serde_json.
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..1000).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        Just("-0".to_owned()),
        Just("01".to_owned()),
        Just("-".to_owned()),
        Just("123456789012345678".to_owned()),
        Just("-123456789012345678".to_owned()),
        Just("1234567890123456789".to_owned()),
        Just("99999999999999999999".to_owned()),
        // Fractions and exponents: serde_json's.
        (-1e6f64..1e6).prop_map(|x| x.to_string()),
        Just("1e3".to_owned()),
        Just("2E-1".to_owned()),
        Just("1.".to_owned()),
        // Strings with and without escapes, control characters and other scripts.
        "[a-z é🦀]{0,6}".prop_map(|s| format!("\"{s}\"")),
        "[a-z\\\\\"\\n\\t\u{1}]{0,4}".prop_map(|s| format!("\"{s}\"")),
        Just(r#""a\"b""#.to_owned()),
        Just(r#""\u00e9""#.to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("null".to_owned()),
        Just("tru".to_owned()),
        Just("nulls".to_owned()),
        // Nested values.
        Just("{}".to_owned()),
        Just(r#"{"a": [1, {"b": 2}]}"#.to_owned()),
        Just("[1, 2]".to_owned()),
    ]
}

fn whitespace() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(String::new()),
        2 => Just(" ".to_owned()),
        1 => "[ \t\n\r]{1,3}",
        // Not JSON whitespace.
        1 => Just("\u{b}".to_owned()),
    ]
}

/// A body: an object of members (names repeat), sometimes broken at the end.
fn body_text() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("é".to_owned()),
        Just("zz".to_owned()),
        Just(String::new()),
        Just(r"a\u0062".to_owned()),
    ];
    let member = (whitespace(), name, whitespace(), whitespace(), body_value());
    let tail = prop_oneof![
        8 => Just(String::new()),
        1 => Just(",".to_owned()),
        1 => Just("}".to_owned()),
        1 => Just("x".to_owned()),
    ];
    (
        whitespace(),
        prop::collection::vec(member, 0..5),
        whitespace(),
        tail,
        any::<bool>(),
    )
        .prop_map(|(lead, members, end, tail, cut)| {
            let members: Vec<String> = members
                .into_iter()
                .map(|(w1, n, w2, w3, v)| format!("{w1}\"{n}\"{w2}:{w3}{v}"))
                .collect();
            let mut text = format!("{lead}{{{}}}{end}{tail}", members.join(","));
            if cut {
                let mut at = text.len() / 2;
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text.truncate(at);
            }
            text
        })
}

/// Members of bodies the fast scan is for: strings without escapes, integers, Booleans, null.
fn fast_body() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        (-1_000_000i64..1_000_000).prop_map(|n| n.to_string()),
        "[a-z é]{0,6}".prop_map(|s| format!("\"{s}\"")),
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("null".to_owned()),
    ];
    let member = (
        prop_oneof![Just("a"), Just("b"), Just("é"), Just("zz")],
        "[ \t\n\r]{0,2}",
        value,
    );
    prop::collection::vec(member, 0..5).prop_map(|members| {
        let members: Vec<String> = members
            .into_iter()
            .map(|(n, w, v)| format!("{w}\"{n}\"{w}:{w}{v}{w}"))
            .collect();
        format!(" {{{}}}\n", members.join(","))
    })
}

fn members() -> Vec<String> {
    ["a", "b", "missing", "é"].map(str::to_owned).to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Whatever the fast scan accepts, serde_json parses, to the same members.
    #[test]
    fn the_fast_body_scan_reads_what_serde_json_reads(text in body_text()) {
        let names = members();
        let mut fast = vec![None; names.len()];
        let mut slow = vec![None; names.len()];
        let parsed = super::message::scan_members(&text, &names, &mut slow);
        if super::scan::flat_object(&text, &names, &mut fast).is_some() {
            prop_assert!(parsed, "{:?}: the fast scan read what serde_json refuses", text);
            prop_assert_eq!(fast, slow, "{:?}", text);
        }
    }

    /// The fast scan reads the common bodies (otherwise it would only cost time).
    #[test]
    fn the_fast_body_scan_reads_flat_telemetry(text in fast_body()) {
        let names = members();
        let mut fast = vec![None; names.len()];
        let mut slow = vec![None; names.len()];
        prop_assert!(super::message::scan_members(&text, &names, &mut slow));
        prop_assert!(super::scan::flat_object(&text, &names, &mut fast).is_some(), "{:?}", text);
        prop_assert_eq!(fast, slow, "{:?}", text);
    }
}

/// `$body` paths into the members [`body_text`] writes (and one it never writes), and now and
/// then another path.
fn body_path() -> BoxedStrategy<Expr> {
    let step = prop_oneof![
        prop_oneof![Just("a"), Just("b")].prop_map(|n| Step::Field(n.to_owned())),
        (0usize..2).prop_map(Step::Index),
    ];
    let member = prop_oneof![Just("a"), Just("b"), Just("é"), Just("zz"), Just("missing")];
    prop_oneof![
        8 => (member, prop::collection::vec(step, 0..2)).prop_map(|(name, rest)| {
            let mut steps = vec![Step::Field(name.to_owned())];
            steps.extend(rest);
            Expr::Path(Root::Body, steps)
        }),
        1 => path(),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// The routing plan's form of a condition — body members read by slot from a view that
    /// scans only those members — has the value the condition has on the body parsed whole.
    #[test]
    fn the_plan_reads_the_body_as_a_whole_parse_does(
        e in expr_of(body_path()),
        text in prop_oneof![body_text(), fast_body()],
    ) {
        let stored = StoredRecord::new(
            PartitionId(0),
            Offset(0),
            Timestamp::from_unix_millis(0),
            Record::new("d", text.clone())
                .with_header("content-type", "application/json")
                .with_header("content-encoding", "utf-8"),
        );
        let whole = MessageView::new(&stored);
        let expected = e
            .eval(&Scope { message: &whole, twin: None })
            .map(super::eval::V::into_owned);
        let mut members = Vec::new();
        e.body_members(&mut members);
        members.sort_unstable();
        members.dedup();
        let planned = e.with_member_slots(&members);
        // The plan's form prints as the condition did.
        prop_assert_eq!(planned.to_string(), e.to_string());
        let view = MessageView::projected(&stored, &members);
        let got = planned
            .eval(&Scope { message: &view, twin: None })
            .map(super::eval::V::into_owned);
        prop_assert_eq!(got, expected, "{} on {:?}", e, text);
    }
}

/// Paths into what [`message`] writes (and some it does not): body members, application and
/// system properties, the twin.
fn message_path() -> BoxedStrategy<Expr> {
    let app = prop_oneof![
        Just("level"),
        Just("LEVEL"),
        Just("site"),
        Just("missing"),
        Just("content-type"),
        Just("iothub-x"),
    ];
    let system = prop_oneof![
        Just("contentType"),
        Just("contentEncoding"),
        Just("connectionDeviceId"),
        Just("connectionModuleId"),
        Just("messageId"),
        Just("enqueuedTime"),
        Just("iothub-connection-device-id"),
        Just("dt-subject"),
        Just("level"),
    ];
    let twin_step = prop_oneof![
        prop_oneof![
            Just("tags"),
            Just("properties"),
            Just("desired"),
            Just("a"),
            Just("b")
        ]
        .prop_map(|n| Step::Field(n.to_owned())),
        (0usize..2).prop_map(Step::Index),
    ];
    prop_oneof![
        4 => body_path(),
        2 => app.prop_map(|n| Expr::Path(Root::App(n.to_owned().into()), Vec::new())),
        2 => system.prop_map(|n| Expr::Path(Root::System(n.to_owned().into()), Vec::new())),
        1 => prop::collection::vec(twin_step, 0..4).prop_map(|s| Expr::Path(Root::Twin, s)),
    ]
    .boxed()
}

/// A message: a body (flat, nested, broken), a level, a content type and encoding (or not), a
/// device id header (or the key), a subject.
fn message() -> impl Strategy<Value = StoredRecord> {
    let level = prop::option::of(prop_oneof![
        Just("critical"),
        Just("Info"),
        Just("42"),
        Just("")
    ]);
    let content = prop_oneof![
        4 => Just(Some(("application/json", "utf-8"))),
        1 => Just(Some(("Application/JSON; charset=utf-8", "UTF-8"))),
        1 => Just(Some(("text/plain", "utf-8"))),
        1 => Just(None),
    ];
    (
        prop_oneof![body_text(), fast_body()],
        level,
        content,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(body, level, content, device, subject)| {
            let mut record = Record::new("dev-1", body);
            if let Some((content_type, encoding)) = content {
                record = record
                    .with_header("content-type", content_type)
                    .with_header("content-encoding", encoding);
            }
            if let Some(level) = level {
                record = record.with_header("level", level);
            }
            if device {
                record = record.with_header(super::DEVICE_ID_HEADER, "dev-49x");
            }
            if subject {
                record = record.with_header("dt-subject", "Thermostat");
            }
            StoredRecord::new(
                PartitionId(0),
                Offset(7),
                Timestamp::from_unix_millis(1_700_000_000_123),
                record,
            )
        })
}

fn twin() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(json!({
            "tags": {"a": 1, "b": "x"},
            "properties": {"desired": {"a": [1, 2.5], "b": true}, "reported": {}}
        }))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// The compiled form routes as the tree's evaluator says — on the whole body and, in the
    /// plan's form, on the projection — and its operands have the tree's values.
    #[test]
    fn the_compiled_test_agrees_with_the_tree(
        e in expr_of(message_path()),
        stored in message(),
        twin in twin(),
    ) {
        let whole = MessageView::new(&stored);
        let scope = Scope { message: &whole, twin: twin.as_ref() };
        let tree = e.eval(&scope).map(super::eval::V::into_owned);
        let expected = tree.as_ref().and_then(Value::as_bool);
        prop_assert_eq!(Test::compile(&e).eval(&scope), expected, "{}", e);

        let mut members = Vec::new();
        e.body_members(&mut members);
        members.sort_unstable();
        members.dedup();
        let view = MessageView::projected(&stored, &members);
        let planned = Test::compile(&e.with_member_slots(&members));
        prop_assert_eq!(
            planned.eval(&Scope { message: &view, twin: twin.as_ref() }),
            expected,
            "{} (planned)", e
        );

        // `(e) = v`, with v the tree's value of `e`, holds exactly when `e` is defined.
        let defined = tree.is_some();
        let same = Expr::Binary(
            BinOp::Eq,
            Box::new(e.clone()),
            Box::new(tree.map_or(Expr::Undefined, Expr::Const)),
        );
        prop_assert_eq!(
            Test::compile(&same).eval(&scope),
            defined.then_some(true),
            "{}", e
        );
    }
}

/// Constants a message's properties and members are often compared with.
fn comparable() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => constant(),
        2 => (-1000i32..1000).prop_map(|n| number(f64::from(n))),
        1 => prop_oneof![
            Just("critical"),
            Just("Info"),
            Just("dev-49x"),
            Just("application/json"),
            Just("")
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// A comparison of a property or member with a constant, the constant on either side (the
    /// compiled form turns the operator around for a constant on the left), has the tree's
    /// truth.
    #[test]
    fn comparisons_with_a_constant_agree_with_the_tree(
        path in message_path(),
        constant in comparable(),
        op in 0usize..6,
        left in any::<bool>(),
        stored in message(),
        twin in twin(),
    ) {
        let ops = [BinOp::Eq, BinOp::NotEq, BinOp::Lt, BinOp::LtEq, BinOp::Gt, BinOp::GtEq];
        let (a, b) = (Box::new(path), Box::new(Expr::Const(constant)));
        let e = if left {
            Expr::Binary(ops[op], b, a)
        } else {
            Expr::Binary(ops[op], a, b)
        };
        let whole = MessageView::new(&stored);
        let scope = Scope { message: &whole, twin: twin.as_ref() };
        let expected = e.eval(&scope).and_then(|v| v.as_bool());
        prop_assert_eq!(Test::compile(&e).eval(&scope), expected, "{}", e);
    }
}
