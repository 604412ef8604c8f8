//! Recovery of the gateway's file stores (the inbox, the twins, the MQTT endpoint's persistent
//! sessions) after damage to their journals, by the storage kit's rule: a torn last frame and a
//! zero-filled tail are cut off; damage followed by intact frames is refused with a typed
//! `Corrupt` error naming the file and the position, and cut off only when the store is opened
//! with `Recovery::Repair`; a crafted frame claiming a huge length or count is a typed error.

mod mqtt_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use iot_core::storage::{FrameScan, Recovery};
use iot_core::{DeviceId, Timestamp};
use iot_gateway::inbox::InboxMessage;
use iot_gateway::mqtt::{MqttConfig, MqttServer};
use iot_gateway::twins::Section;
use iot_gateway::{
    Error, FileInbox, FileInboxConfig, FileTwinStore, FileTwinStoreConfig, Hub, InboxLimits,
    InboxStore, TwinLimits, TwinStore,
};
use mqtt_support::{Client, Fixture};
use rumqttc::QoS;
use serde_json::json;

/// Bytes before the first frame of a journal file: the store's magic and the file kind.
const PREFIX: usize = 12;
const MESSAGES: usize = 5;

fn device() -> DeviceId {
    "dev".parse().expect("id")
}

fn limits() -> InboxLimits {
    InboxLimits::default()
        .max_depth(1000)
        .lock_duration(Duration::from_secs(3600))
        .max_delivery_count(u32::MAX)
}

fn now() -> Timestamp {
    Timestamp::from_unix_millis(1_000_000)
}

fn inbox_config(recovery: Recovery) -> FileInboxConfig {
    FileInboxConfig::default().recovery(recovery)
}

fn twin_config(recovery: Recovery) -> FileTwinStoreConfig {
    FileTwinStoreConfig::default().recovery(recovery)
}

/// The file positions of the intact frames of a journal file.
fn frame_positions(path: &Path) -> Vec<u64> {
    let data = std::fs::read(path).expect("read");
    FrameScan::scan(
        path,
        &data[PREFIX..],
        PREFIX as u64,
        1 << 30,
        Recovery::Strict,
    )
    .expect("intact journal")
    .frames
    .into_iter()
    .map(|(position, _)| position)
    .collect()
}

fn flip(path: &Path, at: u64, mask: u8) {
    let mut data = std::fs::read(path).expect("read");
    data[at as usize] ^= mask;
    std::fs::write(path, data).expect("write");
}

fn append(path: &Path, bytes: &[u8]) {
    let mut data = std::fs::read(path).expect("read");
    data.extend_from_slice(bytes);
    std::fs::write(path, data).expect("write");
}

/// A frame whose header (length and its checksum) is intact and claims `len` bytes.
fn crafted_header(len: u32) -> Vec<u8> {
    let mut header = Vec::new();
    header.extend_from_slice(&len.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    let hcrc = crc32c::crc32c(&header);
    header.extend_from_slice(&hcrc.to_le_bytes());
    header
}

fn assert_corrupt_at(result: Result<impl std::fmt::Debug, Error>, file: &Path, at: u64) {
    match result {
        Err(Error::Corrupt { path, position, .. }) => {
            assert_eq!(path, file);
            assert_eq!(position, at);
        }
        other => panic!(
            "expected corruption in {} at {at}, got {other:?}",
            file.display()
        ),
    }
}

// ---- inbox ----

/// An inbox in `dir` holding `m0`..`m{MESSAGES-1}`, one WAL frame each.
async fn filled_inbox(dir: &Path) -> PathBuf {
    let inbox = FileInbox::open(dir, inbox_config(Recovery::Strict))
        .await
        .expect("open");
    for i in 0..MESSAGES {
        let message = InboxMessage::new(format!("m{i}"), vec![i as u8; 16], now(), HOUR);
        inbox
            .enqueue(&device(), message, now(), limits())
            .await
            .expect("enqueue");
    }
    dir.join("wal")
}

const HOUR: Duration = Duration::from_secs(3600);

/// The ids of every message the inbox holds, in order (the locks taken to list them are
/// released when the inbox is reopened).
async fn message_ids(inbox: &FileInbox) -> Vec<String> {
    let mut ids = Vec::new();
    while let Some(locked) = inbox
        .lock_next(&device(), now(), limits())
        .await
        .expect("lock")
        .locked
    {
        ids.push(locked.message.message_id);
    }
    ids
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

async fn reopen_inbox(dir: &Path, recovery: Recovery) -> Result<FileInbox, Error> {
    FileInbox::open(dir, inbox_config(recovery)).await
}

#[tokio::test]
async fn inbox_a_torn_last_frame_is_cut_off() {
    let dir = tempfile::tempdir().expect("dir");
    let wal = filled_inbox(dir.path()).await;
    let last = *frame_positions(&wal).last().expect("frames");
    let len = std::fs::metadata(&wal).expect("stat").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .expect("open");
    file.set_len(last + (len - last) / 2).expect("tear");
    drop(file);
    let inbox = reopen_inbox(dir.path(), Recovery::Strict)
        .await
        .expect("torn tail recovered");
    // Checked before listing: listing takes locks, which are journaled.
    assert_eq!(std::fs::metadata(&wal).expect("stat").len(), last);
    assert_eq!(message_ids(&inbox).await, ids(0..MESSAGES - 1));
}

#[tokio::test]
async fn inbox_a_zero_filled_tail_is_cut_off() {
    let dir = tempfile::tempdir().expect("dir");
    let wal = filled_inbox(dir.path()).await;
    let len = std::fs::metadata(&wal).expect("stat").len();
    append(&wal, &[0; 4096]);
    let inbox = reopen_inbox(dir.path(), Recovery::Strict)
        .await
        .expect("zero tail recovered");
    assert_eq!(std::fs::metadata(&wal).expect("stat").len(), len);
    assert_eq!(message_ids(&inbox).await, ids(0..MESSAGES));
}

#[tokio::test]
async fn inbox_a_flipped_byte_in_a_middle_frame_is_refused_and_repaired_only_on_request() {
    let dir = tempfile::tempdir().expect("dir");
    let wal = filled_inbox(dir.path()).await;
    let middle = frame_positions(&wal)[MESSAGES / 2];
    // The high byte of the frame's length: unchecked, it would make the frame run past the end
    // of the file and look like a torn tail, taking every later message with it.
    for (at, mask) in [(middle + 3, 0x01), (middle + 20, 0x04)] {
        let dir = tempfile::tempdir().expect("dir");
        let wal = filled_inbox(dir.path()).await;
        flip(&wal, at, mask);
        let damaged = std::fs::read(&wal).expect("read");
        assert_corrupt_at(
            reopen_inbox(dir.path(), Recovery::Strict).await,
            &wal,
            middle,
        );
        assert_eq!(
            std::fs::read(&wal).expect("read"),
            damaged,
            "a refused open must not touch the file"
        );
        let inbox = reopen_inbox(dir.path(), Recovery::Repair)
            .await
            .expect("repair");
        assert_eq!(message_ids(&inbox).await, ids(0..MESSAGES / 2));
        drop(inbox);
        let inbox = reopen_inbox(dir.path(), Recovery::Strict)
            .await
            .expect("open after the repair");
        assert_eq!(message_ids(&inbox).await, ids(0..MESSAGES / 2));
    }
}

#[tokio::test]
async fn inbox_a_crafted_huge_length_or_count_is_a_typed_error() {
    // A WAL frame whose intact header claims 4 GiB.
    let dir = tempfile::tempdir().expect("dir");
    let wal = filled_inbox(dir.path()).await;
    let end = std::fs::metadata(&wal).expect("stat").len();
    append(&wal, &crafted_header(u32::MAX));
    assert_corrupt_at(reopen_inbox(dir.path(), Recovery::Strict).await, &wal, end);

    // A snapshot whose header (checksums valid) claims 2^64-1 operations.
    let dir = tempfile::tempdir().expect("dir");
    let inbox = FileInbox::open(
        dir.path(),
        inbox_config(Recovery::Strict).compact_after_bytes(0),
    )
    .await
    .expect("open");
    let message = InboxMessage::new("m0", &b"x"[..], now(), HOUR);
    inbox
        .enqueue(&device(), message, now(), limits())
        .await
        .expect("enqueue");
    drop(inbox);
    let snapshot = dir.path().join("snapshot");
    let mut data = std::fs::read(&snapshot).expect("snapshot written by compaction");
    let mut header = Vec::new();
    header.extend_from_slice(&data[PREFIX + 12..PREFIX + 20]); // last sequence number
    header.extend_from_slice(&u64::MAX.to_le_bytes());
    let mut frame = Vec::new();
    iot_core::storage::frame::encode(&mut frame, &header).expect("frame");
    data.splice(PREFIX..PREFIX + frame.len(), frame);
    std::fs::write(&snapshot, data).expect("write");
    match reopen_inbox(dir.path(), Recovery::Strict).await {
        Err(Error::Corrupt { path, .. }) => assert_eq!(path, snapshot),
        other => panic!("expected corruption, got {other:?}"),
    }
}

// ---- twins ----

/// A twin store in `dir` with one patched twin per device `t0`..`t{MESSAGES-1}`, one WAL frame
/// each.
async fn filled_twins(dir: &Path) -> PathBuf {
    let twins = FileTwinStore::open(dir, twin_config(Recovery::Strict))
        .await
        .expect("open");
    for i in 0..MESSAGES {
        let device: DeviceId = format!("t{i}").parse().expect("id");
        twins
            .patch(
                &device,
                Section::Desired,
                &json!({ "i": i }),
                None,
                TwinLimits::default(),
            )
            .await
            .expect("patch");
    }
    dir.join("wal")
}

/// Which of the devices `t0`..`t{MESSAGES-1}` have their patch.
async fn patched(twins: &FileTwinStore) -> Vec<usize> {
    let mut out = Vec::new();
    for i in 0..MESSAGES {
        let device: DeviceId = format!("t{i}").parse().expect("id");
        let twin = twins.get(&device).await.expect("get");
        if twin.desired.version == 1 {
            assert_eq!(twin.desired.properties, json!({ "i": i }));
            out.push(i);
        }
    }
    out
}

async fn reopen_twins(dir: &Path, recovery: Recovery) -> Result<FileTwinStore, Error> {
    FileTwinStore::open(dir, twin_config(recovery)).await
}

#[tokio::test]
async fn twins_a_torn_last_frame_and_a_zero_filled_tail_are_cut_off() {
    let dir = tempfile::tempdir().expect("dir");
    let wal = filled_twins(dir.path()).await;
    let last = *frame_positions(&wal).last().expect("frames");
    let len = std::fs::metadata(&wal).expect("stat").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .expect("open");
    file.set_len(len - 3).expect("tear");
    drop(file);
    let twins = reopen_twins(dir.path(), Recovery::Strict)
        .await
        .expect("torn tail recovered");
    assert_eq!(patched(&twins).await, (0..MESSAGES - 1).collect::<Vec<_>>());
    assert_eq!(std::fs::metadata(&wal).expect("stat").len(), last);
    drop(twins);

    append(&wal, &[0; 4096]);
    let twins = reopen_twins(dir.path(), Recovery::Strict)
        .await
        .expect("zero tail recovered");
    assert_eq!(patched(&twins).await, (0..MESSAGES - 1).collect::<Vec<_>>());
    assert_eq!(std::fs::metadata(&wal).expect("stat").len(), last);
}

#[tokio::test]
async fn twins_a_flipped_byte_in_a_middle_frame_is_refused_and_repaired_only_on_request() {
    let dir = tempfile::tempdir().expect("dir");
    let wal = filled_twins(dir.path()).await;
    let middle = frame_positions(&wal)[MESSAGES / 2];
    flip(&wal, middle + 3, 0x01);
    let damaged = std::fs::read(&wal).expect("read");
    assert_corrupt_at(
        reopen_twins(dir.path(), Recovery::Strict).await,
        &wal,
        middle,
    );
    assert_eq!(std::fs::read(&wal).expect("read"), damaged);
    let twins = reopen_twins(dir.path(), Recovery::Repair)
        .await
        .expect("repair");
    assert_eq!(patched(&twins).await, (0..MESSAGES / 2).collect::<Vec<_>>());
}

#[tokio::test]
async fn twins_a_crafted_huge_length_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("dir");
    let wal = filled_twins(dir.path()).await;
    let end = std::fs::metadata(&wal).expect("stat").len();
    append(&wal, &crafted_header(u32::MAX));
    assert_corrupt_at(reopen_twins(dir.path(), Recovery::Strict).await, &wal, end);
}

// ---- MQTT persistent sessions ----

const KEPT: [&str; 3] = ["d-one", "d-two", "d-three"];

/// Runs an MQTT endpoint with `state_dir`, where each of [`KEPT`] connects with a persistent
/// session, subscribes and leaves; then shuts it down.
async fn keep_sessions(state_dir: &Path) {
    let mut config = MqttConfig::default();
    config.state_dir = Some(state_dir.to_owned());
    let fx = Fixture::start_with(config).await;
    for name in KEPT {
        let device = fx.device(name).await;
        let mut options = device.options(fx.addr);
        options.set_clean_session(false);
        let mut client = Client::connect(options).await;
        client
            .subscribe(
                &format!("devices/{name}/messages/devicebound/#"),
                QoS::AtLeastOnce,
            )
            .await;
        client.client.disconnect().await.expect("disconnect");
        // The endpoint keeps the subscriptions before it closes the connection.
        client.closed().await;
    }
    fx.server.shutdown().await;
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        out.push(path.clone());
        if path.is_dir() {
            out.extend(files_under(&path));
        }
    }
    out
}

async fn new_server(
    state_dir: &Path,
    recovery: Recovery,
) -> Result<MqttServer, iot_gateway::mqtt::Error> {
    let identity = Arc::new(iot_identity::MemoryIdentityStore::new());
    let hub = Hub::memory(identity, mqtt_support::HOST)
        .await
        .expect("hub");
    let mut config = MqttConfig::default();
    config.state_dir = Some(state_dir.to_owned());
    config.state_recovery = recovery;
    MqttServer::new(Arc::new(hub), config)
}

#[cfg(unix)]
#[tokio::test]
async fn persistent_sessions_are_private_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let state_dir = dir.path().join("mqtt");
    keep_sessions(&state_dir).await;
    let mut checked = 0;
    for path in std::iter::once(state_dir.clone()).chain(files_under(&state_dir)) {
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} has mode {mode:o}", path.display());
        checked += 1;
    }
    assert!(checked > 1, "nothing was kept");
}

#[tokio::test]
async fn persistent_sessions_a_flipped_byte_is_refused_and_repaired_only_on_request() {
    let dir = tempfile::tempdir().expect("dir");
    let state_dir = dir.path().join("mqtt");
    keep_sessions(&state_dir).await;
    // Turn "d-two" into "d-uwo", another valid device id: without a checksum this would hand
    // d-two's subscriptions to a device that never had them.
    let (file, at) = files_under(&state_dir)
        .into_iter()
        .filter(|p| p.is_file())
        .find_map(|p| {
            let data = std::fs::read(&p).expect("read");
            let at = data.windows(5).position(|w| w == b"d-two")?;
            Some((p, at as u64 + 2))
        })
        .expect("d-two is kept on disk");
    flip(&file, at, b't' ^ b'u');
    let frame = damaged_frame(&file);
    match new_server(&state_dir, Recovery::Strict).await {
        Err(iot_gateway::mqtt::Error::Gateway(Error::Corrupt { path, position, .. })) => {
            assert_eq!(path, file);
            assert_eq!(position, frame);
        }
        Err(other) => panic!("expected corruption, got {other:?}"),
        Ok(_) => panic!("expected corruption, the damaged state was accepted"),
    }
    let server = new_server(&state_dir, Recovery::Repair)
        .await
        .expect("repair");
    drop(server);
    assert_eq!(
        std::fs::metadata(&file).expect("stat").len(),
        frame,
        "the repair cuts the journal at the damaged frame"
    );
    new_server(&state_dir, Recovery::Strict)
        .await
        .expect("open after the repair");
}

/// The position of the first damaged frame of a journal file.
fn damaged_frame(path: &Path) -> u64 {
    let data = std::fs::read(path).expect("read");
    let scan = FrameScan::scan(
        path,
        &data[PREFIX..],
        PREFIX as u64,
        1 << 30,
        Recovery::Repair,
    )
    .expect("scan");
    scan.torn_tail.expect("damage found").position
}
