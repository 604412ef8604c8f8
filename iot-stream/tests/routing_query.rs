//! IoT Hub's routing query language: the examples of IoT Hub's documentation ("IoT Hub message
//! routing query syntax", and the operators and functions of "Expressions and conditions")
//! parse and evaluate as documented, plus undefined semantics and parse errors with positions.
#![allow(clippy::unwrap_used)]

use iot_core::{Offset, PartitionId, Record, StoredRecord, Timestamp};
use iot_stream::Error;
use iot_stream::routing::{Condition, MessageView};
use serde_json::{Value, json};

/// The message body of the documentation's JavaScript sample.
fn weather() -> Value {
    json!({"Weather": {
        "Temperature": 50,
        "Time": "2017-03-09T00:00:00.000Z",
        "PrevTemperatures": [20, 30, 40],
        "IsEnabled": true,
        "Location": {"Street": "One Microsoft Way", "City": "Redmond", "State": "WA"},
        "HistoricalData": [
            {"Month": "Feb", "Temperature": 40},
            {"Month": "Jan", "Temperature": 30}
        ]
    }})
}

/// The documentation's sample twin (its `$metadata` left out).
fn doc_twin() -> Value {
    json!({
        "tags": {"deploymentLocation": {"building": "43", "floor": "1"}},
        "properties": {
            "desired": {"telemetryConfig": {"sendFrequency": "5m"}, "$version": 1},
            "reported": {"telemetryConfig": {"sendFrequency": "5m", "status": "success"},
                         "batteryLevel": 55, "$version": 4}
        }
    })
}

/// The same twin with a numeric floor.
fn numeric_floor_twin() -> Value {
    let mut t = doc_twin();
    t["tags"]["deploymentLocation"]["floor"] = json!(1);
    t
}

fn stored(record: Record) -> StoredRecord {
    // 2021-01-01T00:00:00Z
    StoredRecord::new(
        PartitionId(0),
        Offset(7),
        Timestamp::from_unix_millis(1_609_459_200_000),
        record,
    )
}

/// The documentation's message: system properties, application properties, the JSON body in UTF-8.
fn doc_message() -> StoredRecord {
    stored(
        Record::new("dev-1", weather().to_string())
            .with_header("content-type", "application/json")
            .with_header("content-encoding", "UTF-8")
            .with_header("message-id", "m-1")
            .with_header("correlation-id", "c-1")
            .with_header("iothub-connection-device-id", "dev-1")
            .with_header("iothub-connection-module-id", "mod-a")
            .with_header("dt-dataschema", "dtmi:com:example:Thermostat;1")
            .with_header("processingPath", "hot")
            .with_header("verbose", "true")
            .with_header("severity", "4")
            .with_header("Status", "Active"),
    )
}

/// A twin change notification's body (the documentation's note on filtering them).
fn twin_change_message() -> StoredRecord {
    stored(
        Record::new(
            "dev-1",
            json!({"properties": {"desired": {"telemetryConfig": {"sendFrequency": 15}}}})
                .to_string(),
        )
        .with_header("content-type", "application/json")
        .with_header("content-encoding", "utf-8"),
    )
}

#[derive(Clone, Copy, Debug)]
enum Msg {
    Doc,
    TwinChange,
}

#[derive(Clone, Copy, Debug)]
enum Twin {
    None,
    Doc,
    NumericFloor,
}

/// `(condition, message, twin, expected)`: `Some(b)` a Boolean, `None` undefined (no match).
const CASES: &[(&str, Msg, Twin, Option<bool>)] = &[
    // -- The documentation's examples, on its message, body and twin. --
    (
        "$contentEncoding = 'UTF-8'",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    ("processingPath = 'hot'", Msg::Doc, Twin::None, Some(true)),
    (
        "$contentEncoding = 'UTF-8' AND processingPath = 'hot'",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "$body.Weather.HistoricalData[0].Month = 'Feb'",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "$body.Weather.Temperature = 50 AND $body.Weather.IsEnabled",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "length($body.Weather.Location.State) = 2",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "$body.Weather.Temperature = 50 AND processingPath = 'hot'",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "$body.properties.desired.telemetryConfig.sendFrequency > 10",
        Msg::TwinChange,
        Twin::None,
        Some(true),
    ),
    (
        "is_defined($body.properties.desired.telemetryConfig.sendFrequency)",
        Msg::TwinChange,
        Twin::None,
        Some(true),
    ),
    (
        "is_defined($body.properties.desired.telemetryConfig.sendFrequency)",
        Msg::Doc,
        Twin::None,
        Some(false),
    ),
    // "not supported and will return undefined"
    ("$body[0] = 'Feb'", Msg::Doc, Twin::None, None),
    (
        "$twin.properties.desired.telemetryConfig.sendFrequency = '5m'",
        Msg::Doc,
        Twin::Doc,
        Some(true),
    ),
    (
        "$body.Weather.Temperature = 50 AND $twin.properties.desired.telemetryConfig.sendFrequency = '5m'",
        Msg::Doc,
        Twin::Doc,
        Some(true),
    ),
    (
        "$twin.tags.deploymentLocation.floor = 1",
        Msg::Doc,
        Twin::NumericFloor,
        Some(true),
    ),
    // The sample twin's floor is the string "1": a string never equals a number (undefined).
    (
        "$twin.tags.deploymentLocation.floor = 1",
        Msg::Doc,
        Twin::Doc,
        None,
    ),
    (
        "$twin.tags.deploymentLocation.floor = '1'",
        Msg::Doc,
        Twin::Doc,
        Some(true),
    ),
    (
        "$twin.properties.reported.batteryLevel >= 55",
        Msg::Doc,
        Twin::Doc,
        Some(true),
    ),
    (
        "$twin.tags.deploymentLocation.floor = '1'",
        Msg::Doc,
        Twin::None,
        None,
    ),
    // -- System properties. --
    (
        "$connectionDeviceId = 'dev-1'",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "$connectionModuleId = 'mod-a'",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "$iothub-connection-device-id = 'dev-1'",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "$contentType = 'application/json'",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "$messageId = 'm-1' AND $correlationId = 'c-1'",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "$dt-dataschema = 'dtmi:com:example:Thermostat;1'",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "$enqueuedTime = '2021-01-01T00:00:00.000000Z'",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "$iothub-enqueuedtime > '2020-12-31'",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "$CONTENTTYPE = 'application/json'",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    // -- Application properties: strings, names not case-sensitive. --
    ("status = 'Active'", Msg::Doc, Twin::None, Some(true)),
    ("severity = 4", Msg::Doc, Twin::None, None),
    ("AS_NUMBER(severity) >= 4", Msg::Doc, Twin::None, Some(true)),
    ("verbose = 'true'", Msg::Doc, Twin::None, Some(true)),
    ("verbose", Msg::Doc, Twin::None, None),
    // -- Operators. --
    (
        "$body.Weather.Temperature != 40",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "$body.Weather.Temperature <> 50",
        Msg::Doc,
        Twin::None,
        Some(false),
    ),
    (
        "$body.Weather.Temperature < 51 AND $body.Weather.Temperature <= 50",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "$body.Weather.Temperature > 50 OR $body.Weather.Temperature >= 51",
        Msg::Doc,
        Twin::None,
        Some(false),
    ),
    (
        "($body.Weather.Temperature + 10) * 2 / 4 = 30",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "$body.Weather.Temperature % 7 = 1",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "$body.Weather.Temperature - 60 = -10",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "NOT ($body.Weather.Temperature = 40)",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "NOT $body.Weather.IsEnabled",
        Msg::Doc,
        Twin::None,
        Some(false),
    ),
    (
        "$body.Weather.Location.City > 'Paris'",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "$body.Weather.PrevTemperatures = [20, 30, 40]",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "$body.Weather.Location = $body.Weather.Location",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "0x32 = $body.Weather.Temperature",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "5e1 = $body.Weather.Temperature",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    ("true", Msg::Doc, Twin::None, Some(true)),
    ("false", Msg::Doc, Twin::None, Some(false)),
    ("TRUE AND NOT False", Msg::Doc, Twin::None, Some(true)),
    ("null = null", Msg::Doc, Twin::None, Some(true)),
    // -- Undefined: missing values, type mismatches, non-finite arithmetic. --
    ("missing = 'x'", Msg::Doc, Twin::None, None),
    ("NOT (missing = 'x')", Msg::Doc, Twin::None, None),
    (
        "missing = 'x' OR processingPath = 'hot'",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "missing = 'x' AND processingPath = 'cold'",
        Msg::Doc,
        Twin::None,
        Some(false),
    ),
    (
        "missing = 'x' AND processingPath = 'hot'",
        Msg::Doc,
        Twin::None,
        None,
    ),
    (
        "$body.Weather.Temperature = '50'",
        Msg::Doc,
        Twin::None,
        None,
    ),
    (
        "$body.Weather.Temperature / 0 = 1",
        Msg::Doc,
        Twin::None,
        None,
    ),
    (
        "$body.Weather.Nothing.Deeper = 1",
        Msg::Doc,
        Twin::None,
        None,
    ),
    (
        "$body.Weather.HistoricalData[5].Month = 'Feb'",
        Msg::Doc,
        Twin::None,
        None,
    ),
    ("undefined = undefined", Msg::Doc, Twin::None, None),
    ("$body", Msg::Doc, Twin::None, None),
    ("'text'", Msg::Doc, Twin::None, None),
    // -- Type checking and casting functions. --
    (
        "IS_STRING($body.Weather.Location.City)",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "IS_NUMBER($body.Weather.Temperature)",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "IS_BOOL($body.Weather.IsEnabled)",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "IS_NULL(null) AND NOT IS_NULL($body.Weather.Temperature)",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "IS_OBJECT($body.Weather.Location)",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "IS_ARRAY($body.Weather.PrevTemperatures)",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "IS_PRIMITIVE($body.Weather.Time) AND NOT IS_PRIMITIVE($body.Weather.Location)",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    ("IS_DEFINED(missing)", Msg::Doc, Twin::None, Some(false)),
    ("IS_STRING(missing)", Msg::Doc, Twin::None, Some(false)),
    ("AS_NUMBER('12.5') = 12.5", Msg::Doc, Twin::None, Some(true)),
    ("AS_NUMBER('twelve') = 12", Msg::Doc, Twin::None, None),
    // -- String functions. --
    (
        "LOWER($body.Weather.Location.City) = 'redmond'",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "UPPER($body.Weather.Location.City) = 'REDMOND'",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "CONCAT($body.Weather.Location.City, ', ', $body.Weather.Location.State) = 'Redmond, WA'",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "CONTAINS($body.Weather.Location.Street, 'Microsoft')",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "STARTS_WITH($body.Weather.Location.Street, 'One')",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "ENDS_WITH($body.Weather.Location.Street, 'Way')",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "SUBSTRING($body.Weather.Location.City, 0, 3) = 'Red'",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "SUBSTRING($body.Weather.Location.City, 3) = 'mond'",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "INDEX_OF($body.Weather.Location.City, 'mond') = 3",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "INDEX_OF($body.Weather.Location.City, 'x') = -1",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "LENGTH($body.Weather.Temperature) = 2",
        Msg::Doc,
        Twin::None,
        None,
    ),
    // -- Math functions. --
    ("ABS(-3) = 3", Msg::Doc, Twin::None, Some(true)),
    ("EXP(0) = 1", Msg::Doc, Twin::None, Some(true)),
    ("POWER(2, 10) = 1024", Msg::Doc, Twin::None, Some(true)),
    ("SQUARE(3) = 9", Msg::Doc, Twin::None, Some(true)),
    (
        "CEILING(1.2) = 2 AND FLOOR(1.8) = 1",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    (
        "SIGN(-2) = -1 AND SIGN(0) = 0 AND SIGN(7) = 1",
        Msg::Doc,
        Twin::None,
        Some(true),
    ),
    ("SQRT(16) = 4", Msg::Doc, Twin::None, Some(true)),
    ("SQRT(-1) = 0", Msg::Doc, Twin::None, None),
    ("ROUND(2.5) = 3", Msg::Doc, Twin::None, Some(true)),
];

#[test]
fn documented_examples_parse_and_behave_as_documented() {
    let doc = doc_message();
    let change = twin_change_message();
    let (doc_twin, numeric) = (doc_twin(), numeric_floor_twin());
    let mut failures = Vec::new();
    for &(text, msg, twin, expected) in CASES {
        let condition =
            Condition::parse(text).unwrap_or_else(|e| panic!("{text:?} does not parse: {e}"));
        let record = match msg {
            Msg::Doc => &doc,
            Msg::TwinChange => &change,
        };
        let twin = match twin {
            Twin::None => None,
            Twin::Doc => Some(&doc_twin),
            Twin::NumericFloor => Some(&numeric),
        };
        let got = condition.evaluate(&MessageView::new(record), twin);
        if got != expected {
            failures.push(format!("{text:?}: expected {expected:?}, got {got:?}"));
        }
        // The printed form parses back to the same condition and evaluates the same.
        let printed = Condition::parse(&condition.to_string())
            .unwrap_or_else(|e| panic!("{condition} (from {text:?}) does not parse: {e}"));
        assert_eq!(printed.to_string(), condition.to_string());
        assert_eq!(
            printed.evaluate(&MessageView::new(record), twin),
            got,
            "{text}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_body_is_read_only_for_json_in_utf_8_16_or_32() {
    let body = weather().to_string();
    let condition = Condition::parse("$body.Weather.Temperature = 50").unwrap();
    let with = |ct: Option<&str>, ce: Option<&str>, payload: Vec<u8>| {
        let mut r = Record::new("dev-1", payload);
        if let Some(ct) = ct {
            r = r.with_header("content-type", ct);
        }
        if let Some(ce) = ce {
            r = r.with_header("content-encoding", ce);
        }
        condition.evaluate(&MessageView::new(&stored(r)), None)
    };
    let utf8 = body.as_bytes().to_vec();
    let utf16le: Vec<u8> = body.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut utf16be = vec![0xFE, 0xFF];
    utf16be.extend(body.encode_utf16().flat_map(u16::to_be_bytes));
    let utf32: Vec<u8> = body
        .chars()
        .flat_map(|c| (c as u32).to_le_bytes())
        .collect();
    let json = Some("application/json");
    assert_eq!(with(json, Some("utf-8"), utf8.clone()), Some(true));
    assert_eq!(
        with(Some("Application/JSON"), Some("UTF-8"), utf8.clone()),
        Some(true)
    );
    assert_eq!(with(json, Some("utf-16"), utf16le), Some(true));
    assert_eq!(with(json, Some("utf-16"), utf16be), Some(true));
    assert_eq!(with(json, Some("utf-32"), utf32), Some(true));
    // Without the content type or encoding IoT Hub does not evaluate the body.
    assert_eq!(with(None, Some("utf-8"), utf8.clone()), None);
    assert_eq!(with(json, None, utf8.clone()), None);
    assert_eq!(with(Some("text/plain"), Some("utf-8"), utf8.clone()), None);
    assert_eq!(with(json, Some("gzip"), utf8), None);
    // A body that does not parse is undefined, not an error.
    assert_eq!(with(json, Some("utf-8"), b"{not json".to_vec()), None);
}

fn position(text: &str) -> (u64, u64, String) {
    match Condition::parse(text) {
        Err(Error::Rule {
            line,
            column,
            reason,
        }) => (line, column, reason),
        other => panic!("{text:?}: expected a rule error, got {other:?}"),
    }
}

#[test]
fn a_parse_error_names_its_position() {
    let (line, column, reason) = position("level = = 'critical'");
    assert_eq!((line, column), (1, 9), "{reason}");
    assert!(reason.contains("byte 8"), "{reason}");

    let (line, column, reason) = position("level = 'critical'\n  AND (temp > 3");
    assert_eq!((line, column), (2, 16), "{reason}");
    assert!(reason.contains("')'"), "{reason}");

    let (line, column, reason) = position("a = 1 AND FOO(b)");
    assert_eq!((line, column), (1, 11));
    assert!(reason.contains("unknown function"), "{reason}");

    let (line, column, reason) = position("name = 'unterminated");
    assert_eq!((line, column), (1, 8));
    assert!(reason.contains("unterminated"), "{reason}");

    let (line, column, reason) = position("STARTS_WITH(a)");
    assert_eq!((line, column), (1, 1));
    assert!(reason.contains("takes 2 arguments"), "{reason}");

    let (line, column, _) = position("a = 1 # 2");
    assert_eq!((line, column), (1, 7));

    let (line, column, _) = position("$body.Weather[x] = 1");
    assert_eq!((line, column), (1, 15));

    let (line, column, _) = position("a = 1 b = 2");
    assert_eq!((line, column), (1, 7));

    let (line, column, _) = position("");
    assert_eq!((line, column), (1, 1));

    // Columns count characters: a multi-byte character before the error moves it by one.
    let (line, column, reason) = position("name = 'é' AND AND");
    assert_eq!((line, column), (1, 16), "{reason}");
    assert!(reason.contains("byte 16"), "{reason}");

    // Nesting is bounded, so a hostile condition is an error, not a stack overflow.
    let deep = format!("{}1{}", "(".repeat(1_000), ")".repeat(1_000));
    let (_, _, reason) = position(&deep);
    assert!(reason.contains("nested deeper"), "{reason}");
    // Long chains are bounded too (they make left-deep trees); one under the bound evaluates.
    let (_, _, reason) = position(&format!("1{} = 0", " + 1".repeat(5_000)));
    assert!(reason.contains("tokens"), "{reason}");
    let sum = Condition::parse(&format!("1{} = 1000", " + 1".repeat(999))).unwrap();
    let ands = Condition::parse(&vec!["processingPath = 'hot'"; 500].join(" AND ")).unwrap();
    let record = doc_message();
    assert_eq!(sum.evaluate(&MessageView::new(&record), None), Some(true));
    assert_eq!(ands.evaluate(&MessageView::new(&record), None), Some(true));
}
