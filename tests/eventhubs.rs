//! The Event Hubs-compatible endpoint read with fe2o3-amqp's client side (no Python): selector
//! filters, streaming of new records, `$management` queries, tokens, refused links and hostile
//! input.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::RecvError;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::definitions::{AmqpError, ErrorCondition};
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Data, Message, MessageId, Properties, Source,
};
use fe2o3_amqp::types::primitives::{SimpleValue, Symbol, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use iot_core::{Log, MemoryLog, PartitionId, Record};
use iot_gateway::http::{PolicyStore, Rights, SharedAccessPolicy};
use iot_sdk::eventhubs::{EventHubsConfig, EventHubsEndpoint, token};
use serde_amqp::described::Described;
use serde_amqp::descriptor::Descriptor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "hub.local";
const ENTITY: &str = "hub";
const WAIT: Duration = Duration::from_secs(10);

struct Fixture {
    log: Arc<MemoryLog>,
    key: String,
    policies: Arc<PolicyStore>,
    addr: SocketAddr,
    _endpoint: EventHubsEndpoint,
}

impl Fixture {
    /// SASL PLAIN with the `service` policy's key.
    fn service_sasl(&self) -> SaslProfile {
        SaslProfile::Plain {
            username: "service".into(),
            password: self.key.clone(),
        }
    }
}

async fn fixture() -> Fixture {
    let log = Arc::new(MemoryLog::new(4).expect("log"));
    let service = SharedAccessPolicy::generate("service", Rights::SERVICE_CONNECT);
    let key = service.primary.expose_base64().to_string();
    let policies = Arc::new(PolicyStore::memory(vec![
        service,
        SharedAccessPolicy::generate("registryRead", Rights::REGISTRY_READ),
    ]));
    let endpoint = EventHubsEndpoint::new(
        log.clone() as Arc<dyn Log>,
        policies.clone(),
        EventHubsConfig::new(HOST, ENTITY),
    );
    let addr = endpoint
        .listen_tcp("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listen");
    Fixture {
        log,
        key,
        policies,
        addr,
        _endpoint: endpoint,
    }
}

fn telemetry(device: &str, n: usize) -> Record {
    Record::new(device, format!("{{\"n\":{n}}}"))
        .with_header("iothub-connection-device-id", device)
        .with_header("message-id", format!("{device}-{n}"))
        .with_header("n", n.to_string())
}

async fn append(log: &MemoryLog, partition: u32, device: &str, range: std::ops::Range<usize>) {
    let records = range.map(|n| telemetry(device, n)).collect();
    log.append(PartitionId(partition), records)
        .await
        .expect("append");
}

fn unix_now() -> u64 {
    iot_core::Timestamp::now().as_unix_millis() / 1000
}

fn token_for(key: &str) -> String {
    token::sign(
        &format!("sb://{HOST}/{ENTITY}/consumergroups/$default"),
        "service",
        key,
        unix_now() + 3600,
    )
}

async fn connect(
    addr: SocketAddr,
    sasl: SaslProfile,
) -> (ConnectionHandle<()>, fe2o3_amqp::session::SessionHandle<()>) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut connection = Connection::builder()
        .container_id("test-client")
        .hostname(HOST)
        .sasl_profile(sasl)
        .open_with_stream(stream)
        .await
        .expect("open");
    let session = Session::begin(&mut connection).await.expect("begin");
    (connection, session)
}

/// One request on a request/response node; returns the status code and the body.
async fn request(
    session: &mut fe2o3_amqp::session::SessionHandle<()>,
    node: &str,
    app: Vec<(&str, &str)>,
    body: Value,
) -> (i32, Value) {
    let mut sender = Sender::attach(session, format!("{node}-req"), node)
        .await
        .expect("request link");
    let mut receiver = Receiver::builder()
        .name(format!("{node}-rsp"))
        .source(node)
        .target("client-reply")
        .attach(session)
        .await
        .expect("reply link");
    let mut props = ApplicationProperties::builder();
    for (k, v) in app {
        props = props.insert(k, SimpleValue::String(v.into()));
    }
    let message = Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(Properties {
            message_id: Some(MessageId::String("req-1".into())),
            reply_to: Some("client-reply".into()),
            ..Properties::default()
        }),
        application_properties: Some(props.build()),
        body: Body::Value(AmqpValue(body)),
        footer: None,
    };
    sender.send(message).await.expect("send request");
    let delivery = tokio::time::timeout(WAIT, receiver.recv::<Body<Value>>())
        .await
        .expect("reply in time")
        .expect("reply");
    receiver.accept(&delivery).await.expect("accept");
    let reply = delivery.into_message();
    assert_eq!(
        reply
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.clone()),
        Some(MessageId::String("req-1".into()))
    );
    let status = match reply
        .application_properties
        .as_ref()
        .and_then(|a| a.get("status-code"))
    {
        Some(SimpleValue::Int(s)) => *s,
        other => panic!("status-code {other:?}"),
    };
    let body = match reply.body {
        Body::Value(AmqpValue(v)) => v,
        other => panic!("body {other:?}"),
    };
    let _ = sender.close().await;
    let _ = receiver.close().await;
    (status, body)
}

async fn put_token(session: &mut fe2o3_amqp::session::SessionHandle<()>, token: &str) -> i32 {
    let audience = format!("sb://{HOST}/{ENTITY}/consumergroups/$default");
    request(
        session,
        "$cbs",
        vec![
            ("operation", "put-token"),
            ("type", "servicebus.windows.net:sastoken"),
            ("name", &audience),
        ],
        Value::String(token.to_owned()),
    )
    .await
    .0
}

async fn open_partition(
    session: &mut fe2o3_amqp::session::SessionHandle<()>,
    partition: &str,
    selector: Option<&str>,
) -> Receiver {
    let mut source = Source::builder().address(format!(
        "amqps://{HOST}/{ENTITY}/ConsumerGroups/$Default/Partitions/{partition}"
    ));
    if let Some(expr) = selector {
        source = source.add_to_filter(
            Symbol::from("apache.org:selector-filter:string"),
            Described {
                descriptor: Descriptor::Name(Symbol::from("apache.org:selector-filter:string")),
                value: Value::String(expr.to_owned()),
            },
        );
    }
    Receiver::builder()
        .name(format!("p{partition}"))
        .source(source.build())
        .target("client")
        .attach(session)
        .await
        .expect("attach")
}

fn annotation(message: &Message<Body<Value>>, name: &str) -> Option<Value> {
    message
        .message_annotations
        .as_ref()?
        .get(&OwnedKey::Symbol(Symbol::from(name)))
        .cloned()
}

/// The next event: (sequence number, payload, device id annotation, `n` property).
async fn next(receiver: &mut Receiver) -> (i64, String, Option<Value>, Option<SimpleValue>) {
    let delivery = tokio::time::timeout(WAIT, receiver.recv::<Body<Value>>())
        .await
        .expect("event in time")
        .expect("event");
    receiver.accept(&delivery).await.expect("accept");
    let m = delivery.into_message();
    let seq = match annotation(&m, "x-opt-sequence-number") {
        Some(Value::Long(s)) => s,
        other => panic!("x-opt-sequence-number {other:?}"),
    };
    assert_eq!(
        annotation(&m, "x-opt-offset"),
        Some(Value::String(seq.to_string()))
    );
    let n = m
        .application_properties
        .as_ref()
        .and_then(|a| a.get("n").cloned());
    let body = match &m.body {
        Body::Data(batch) => batch.iter().flat_map(|Data(b)| b.to_vec()).collect(),
        other => panic!("body {other:?}"),
    };
    (
        seq,
        String::from_utf8(body).expect("utf8"),
        annotation(&m, "iothub-connection-device-id"),
        n,
    )
}

#[tokio::test]
async fn reads_from_offsets_sequence_numbers_and_times_then_tails() {
    let f = fixture().await;
    append(&f.log, 1, "dev-a", 0..10).await;
    let (_c, mut session) = connect(f.addr, SaslProfile::Anonymous).await;
    assert_eq!(put_token(&mut session, &token_for(&f.key)).await, 202);

    // From the start.
    let mut r = open_partition(
        &mut session,
        "1",
        Some("amqp.annotation.x-opt-offset > '-1'"),
    )
    .await;
    let (seq, body, device, n) = next(&mut r).await;
    assert_eq!((seq, body.as_str()), (0, "{\"n\":0}"));
    assert_eq!(device, Some(Value::String("dev-a".into())));
    assert_eq!(n, Some(SimpleValue::String("0".into())));
    for want in 1..10 {
        assert_eq!(next(&mut r).await.0, want, "in order");
    }
    // Tail: a record appended now arrives on the open link.
    append(&f.log, 1, "dev-a", 10..11).await;
    assert_eq!(next(&mut r).await.0, 10);
    let _ = r.close().await;

    // After an offset (a checkpoint), at a sequence number, after an enqueued time.
    let mut r = open_partition(
        &mut session,
        "1",
        Some("amqp.annotation.x-opt-offset > '6'"),
    )
    .await;
    assert_eq!(next(&mut r).await.0, 7);
    let _ = r.close().await;
    let mut r = open_partition(
        &mut session,
        "1",
        Some("amqp.annotation.x-opt-sequence-number >= '4'"),
    )
    .await;
    assert_eq!(next(&mut r).await.0, 4);
    let _ = r.close().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = iot_core::Timestamp::now().as_unix_millis();
    tokio::time::sleep(Duration::from_millis(20)).await;
    append(&f.log, 1, "dev-b", 0..2).await;
    let mut r = open_partition(
        &mut session,
        "1",
        Some(&format!("amqp.annotation.x-opt-enqueued-time > '{cut}'")),
    )
    .await;
    let (seq, _, device, _) = next(&mut r).await;
    assert_eq!(seq, 11);
    assert_eq!(device, Some(Value::String("dev-b".into())));
    let _ = r.close().await;

    // @latest: only what is appended after the link opens.
    let mut r = open_partition(
        &mut session,
        "1",
        Some("amqp.annotation.x-opt-offset > '@latest'"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    append(&f.log, 1, "dev-c", 0..1).await;
    assert_eq!(next(&mut r).await.0, 13);
}

fn field<'a>(body: &'a Value, name: &str) -> &'a Value {
    match body {
        Value::Map(m) => m.get(&Value::String(name.into())).expect(name),
        other => panic!("map expected, got {other:?}"),
    }
}

#[tokio::test]
async fn management_answers_entity_and_partition_reads() {
    let f = fixture().await;
    append(&f.log, 2, "dev-a", 0..5).await;
    let (_c, mut session) = connect(f.addr, SaslProfile::Anonymous).await;
    let read = |kind: &'static str, partition: Option<&'static str>| {
        let mut app = vec![("operation", "READ"), ("type", kind), ("name", ENTITY)];
        if let Some(p) = partition {
            app.push(("partition", p));
        }
        app
    };
    // Not authorized yet.
    let (status, _) = request(
        &mut session,
        "$management",
        read("com.microsoft:eventhub", None),
        Value::Null,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(put_token(&mut session, &token_for(&f.key)).await, 202);

    let (status, body) = request(
        &mut session,
        "$management",
        read("com.microsoft:eventhub", None),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(field(&body, "name"), &Value::String(ENTITY.into()));
    assert_eq!(field(&body, "partition_count"), &Value::Int(4));
    match field(&body, "partition_ids") {
        Value::Array(ids) => assert_eq!(ids.len(), 4),
        other => panic!("{other:?}"),
    }
    let (status, body) = request(
        &mut session,
        "$management",
        read("com.microsoft:partition", Some("2")),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(field(&body, "begin_sequence_number"), &Value::Long(0));
    assert_eq!(
        field(&body, "last_enqueued_sequence_number"),
        &Value::Long(4)
    );
    assert_eq!(
        field(&body, "last_enqueued_offset"),
        &Value::String("4".into())
    );
    assert_eq!(field(&body, "is_partition_empty"), &Value::Bool(false));
    let (_, empty) = request(
        &mut session,
        "$management",
        read("com.microsoft:partition", Some("0")),
        Value::Null,
    )
    .await;
    assert_eq!(field(&empty, "is_partition_empty"), &Value::Bool(true));
    assert_eq!(
        field(&empty, "last_enqueued_sequence_number"),
        &Value::Long(-1)
    );
    let (status, _) = request(
        &mut session,
        "$management",
        read("com.microsoft:partition", Some("9")),
        Value::Null,
    )
    .await;
    assert_eq!(status, 404);
}

/// The error a refused receive link reports on its first receive.
async fn refusal(mut receiver: Receiver) -> ErrorCondition {
    match tokio::time::timeout(WAIT, receiver.recv::<Body<Value>>())
        .await
        .expect("in time")
    {
        Err(RecvError::LinkStateError(e)) => match e {
            fe2o3_amqp::link::LinkStateError::RemoteClosedWithError(err)
            | fe2o3_amqp::link::LinkStateError::RemoteDetachedWithError(err) => err.condition,
            other => panic!("unexpected link state {other:?}"),
        },
        other => panic!("expected the link to be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn refuses_wrong_tokens_and_missing_partitions() {
    let f = fixture().await;
    append(&f.log, 0, "dev-a", 0..1).await;
    let (_c, mut session) = connect(f.addr, SaslProfile::Anonymous).await;
    // Without a token, the partition link is refused.
    let r = open_partition(&mut session, "0", None).await;
    assert_eq!(
        refusal(r).await,
        ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess)
    );
    // A token signed with another key, and one of a policy without ServiceConnect.
    let other = SharedAccessPolicy::generate("service", Rights::SERVICE_CONNECT);
    assert_eq!(
        put_token(&mut session, &token_for(&other.primary.expose_base64())).await,
        401
    );
    let read_only = f.policies.get("registryRead").expect("policy");
    let t = token::sign(
        &format!("sb://{HOST}/{ENTITY}"),
        "registryRead",
        &read_only.primary.expose_base64(),
        unix_now() + 60,
    );
    assert_eq!(put_token(&mut session, &t).await, 401);
    let expired = token::sign(
        &format!("sb://{HOST}/{ENTITY}"),
        "service",
        &f.key,
        unix_now() - 1,
    );
    assert_eq!(put_token(&mut session, &expired).await, 401);
    let r = open_partition(&mut session, "0", None).await;
    assert_eq!(
        refusal(r).await,
        ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess)
    );

    // Authorized: a partition that does not exist is refused with amqp:not-found, and the
    // session goes on serving the partitions that do.
    assert_eq!(put_token(&mut session, &token_for(&f.key)).await, 202);
    let r = open_partition(&mut session, "4", None).await;
    assert_eq!(
        refusal(r).await,
        ErrorCondition::AmqpError(AmqpError::NotFound)
    );
    let mut r = open_partition(&mut session, "0", None).await;
    assert_eq!(next(&mut r).await.0, 0);
}

#[tokio::test]
async fn sasl_plain_with_the_policy_key_authorizes_the_connection() {
    let f = fixture().await;
    append(&f.log, 3, "dev-a", 0..1).await;
    let (_c, mut session) = connect(f.addr, f.service_sasl()).await;
    let mut r = open_partition(&mut session, "3", None).await;
    assert_eq!(next(&mut r).await.0, 0);
    // A wrong key fails the SASL exchange.
    let stream = TcpStream::connect(f.addr).await.expect("connect");
    let refused = Connection::builder()
        .container_id("bad")
        .sasl_profile(SaslProfile::Plain {
            username: "service".into(),
            password: "wrong".into(),
        })
        .open_with_stream(stream)
        .await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn hostile_input_closes_only_that_connection() {
    let f = fixture().await;
    let (_c, mut session) = connect(f.addr, SaslProfile::Anonymous).await;
    assert_eq!(put_token(&mut session, &token_for(&f.key)).await, 202);
    let mut r = open_partition(&mut session, "2", None).await;

    let hostile: [&[u8]; 5] = [
        // Not AMQP at all.
        b"GET / HTTP/1.1\r\n\r\n",
        // The SASL header, then a frame claiming 4 GiB.
        b"AMQP\x03\x01\x00\x00\xff\xff\xff\xff\x02\x01\x00\x00",
        // The SASL header, then a truncated frame.
        b"AMQP\x03\x01\x00\x00\x00\x00\x00\x20\x02\x01\x00\x00\x00\x53",
        // The SASL header, then a frame of garbage performative.
        b"AMQP\x03\x01\x00\x00\x00\x00\x00\x0c\x02\x01\x00\x00\x00\x53\xff\x00",
        // The SASL header, then a frame smaller than its own header, on which fe2o3-amqp's
        // decoder would panic: the frame guard closes the connection first.
        b"AMQP\x03\x01\x00\x00\x00\x00\x00\x05\x02",
    ];
    for bytes in hostile {
        let mut s = TcpStream::connect(f.addr).await.expect("connect");
        s.write_all(bytes).await.expect("write");
        let mut buf = [0u8; 256];
        // The endpoint answers with at most its header and closes: read to EOF.
        let closed = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "hostile connection left open: {bytes:?}");
    }
    // The good connection still streams.
    append(&f.log, 2, "dev-a", 0..3).await;
    for want in 0..3 {
        assert_eq!(next(&mut r).await.0, want);
    }
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_at_accept() {
    let log = Arc::new(MemoryLog::new(4).expect("log"));
    let policies = Arc::new(PolicyStore::memory(vec![SharedAccessPolicy::generate(
        "service",
        Rights::SERVICE_CONNECT,
    )]));
    let mut config = EventHubsConfig::new(HOST, ENTITY);
    config.max_connections = 1;
    let endpoint = EventHubsEndpoint::new(log as Arc<dyn Log>, policies, config);
    let addr = endpoint
        .listen_tcp("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listen");
    // The first connection holds the only slot (it sits in its handshake).
    let mut first = TcpStream::connect(addr).await.expect("connect");
    first
        .write_all(b"AMQP\x03\x01\x00\x00")
        .await
        .expect("write");
    let mut header = [0u8; 8];
    first
        .read_exact(&mut header)
        .await
        .expect("the SASL header back");
    assert_eq!(&header[..4], b"AMQP");
    // The second is closed without a word.
    let mut second = TcpStream::connect(addr).await.expect("connect");
    let _ = second.write_all(b"AMQP\x03\x01\x00\x00").await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(15), second.read(&mut buf))
        .await
        .expect("the second connection is closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // Once the first ends, a connection is served again.
    drop(first);
    let mut served = false;
    for _ in 0..50 {
        let mut again = TcpStream::connect(addr).await.expect("connect");
        let _ = again.write_all(b"AMQP\x03\x01\x00\x00").await;
        if matches!(again.read(&mut header).await, Ok(8)) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served,
        "a slot is free again after the first connection ended"
    );
}

#[tokio::test]
async fn events_larger_than_the_clients_frames_arrive_whole_through_a_small_session_window() {
    let f = fixture().await;
    // Small events around a large one: the large one is cut into frames of 512 bytes, and the
    // client's session window of 4 frames makes the endpoint wait for its flows in between.
    append(&f.log, 0, "dev-a", 0..20).await;
    let big = "x".repeat(5_000);
    let mut large = telemetry("dev-a", 20);
    large.payload = big.clone().into();
    f.log
        .append(PartitionId(0), vec![large])
        .await
        .expect("append");
    append(&f.log, 0, "dev-a", 21..40).await;
    let stream = TcpStream::connect(f.addr).await.expect("connect");
    let mut connection = Connection::builder()
        .container_id("small-frames")
        .hostname(HOST)
        .max_frame_size(512u32)
        .sasl_profile(f.service_sasl())
        .open_with_stream(stream)
        .await
        .expect("open");
    let mut session = Session::builder()
        .incoming_window(4)
        .begin(&mut connection)
        .await
        .expect("begin");
    let mut r = open_partition(&mut session, "0", None).await;
    for want in 0..40 {
        let (seq, body, _, _) = next(&mut r).await;
        assert_eq!(seq, want);
        if want == 20 {
            assert_eq!(body, big);
        } else {
            assert_eq!(body, format!("{{\"n\":{want}}}"));
        }
    }
}

#[tokio::test]
async fn a_presettled_link_gets_no_more_events_than_its_credit() {
    let f = fixture().await;
    append(&f.log, 2, "dev-b", 0..30).await;
    let (_c, mut session) = connect(f.addr, f.service_sasl()).await;
    let mut r = Receiver::builder()
        .name("presettled")
        .source(format!("{ENTITY}/ConsumerGroups/$Default/Partitions/2"))
        .target("client")
        .sender_settle_mode(fe2o3_amqp::types::definitions::SenderSettleMode::Settled)
        .credit_mode(fe2o3_amqp::link::receiver::CreditMode::Manual)
        .attach(&mut session)
        .await
        .expect("attach");
    r.set_credit(10).await.expect("credit");
    for want in 0..10 {
        let delivery = tokio::time::timeout(WAIT, r.recv::<Body<Value>>())
            .await
            .expect("in time")
            .expect("event");
        let seq = annotation(delivery.message(), "x-opt-sequence-number");
        assert_eq!(seq, Some(Value::Long(want)));
    }
    // The credit is used up: nothing more comes until the client gives more.
    let more = tokio::time::timeout(Duration::from_millis(500), r.recv::<Body<Value>>()).await;
    assert!(more.is_err(), "an event beyond the credit: {more:?}");
    r.set_credit(20).await.expect("credit");
    for want in 10..30 {
        let delivery = tokio::time::timeout(WAIT, r.recv::<Body<Value>>())
            .await
            .expect("in time")
            .expect("event");
        let seq = annotation(delivery.message(), "x-opt-sequence-number");
        assert_eq!(seq, Some(Value::Long(want)));
    }
}

#[tokio::test]
async fn a_receive_link_is_closed_when_its_token_expires() {
    let f = fixture().await;
    append(&f.log, 3, "dev-c", 0..1).await;
    let (_c, mut session) = connect(f.addr, SaslProfile::Anonymous).await;
    let short = token::sign(
        &format!("sb://{HOST}/{ENTITY}/consumergroups/$default"),
        "service",
        &f.key,
        unix_now() + 2,
    );
    assert_eq!(put_token(&mut session, &short).await, 202);
    let mut r = open_partition(&mut session, "3", None).await;
    assert_eq!(next(&mut r).await.0, 0);
    // No renewal: within a few seconds of the expiry the link is closed.
    assert_eq!(
        refusal(r).await,
        ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess)
    );
}
