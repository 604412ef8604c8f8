//! Consumer-group commits in JetStream: one subject per (topic, group, partition) in the metadata
//! stream, which keeps each subject's last message — the offset, in decimal. A commit is
//! acknowledged by JetStream like an append, with the same durability.

use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use iot_core::{GroupName, Offset, Result};

use super::error::{Inconsistent, backend, request};
use super::factory::Shared;
use super::naming::{TopicNames, meta_subject};
use super::partition::Partition;

pub(crate) async fn commit(
    shared: &Shared,
    names: &TopicNames,
    part: &Partition,
    group: &GroupName,
    offset: Offset,
) -> Result<()> {
    let bounds = part.bounds(shared).await?;
    if offset > bounds.next {
        return Err(iot_core::Error::OffsetBeyondEnd {
            partition: part.id,
            offset,
            next: bounds.next,
        });
    }
    let subject = meta_subject(&shared.config.prefix, &names.group_key(group, part.id));
    let message = PublishMessage::build().payload(Bytes::from(offset.get().to_string()));
    shared
        .timed("committing a group offset", async {
            let ack = shared
                .js
                .send_publish(subject, message)
                .await
                .map_err(request)?;
            ack.await.map_err(request)
        })
        .await?;
    Ok(())
}

pub(crate) async fn committed(
    shared: &Shared,
    names: &TopicNames,
    part: &Partition,
    group: &GroupName,
) -> Result<Option<Offset>> {
    let key = names.group_key(group, part.id);
    let Some(value) = shared
        .get_meta(&meta_subject(&shared.config.prefix, &key))
        .await?
    else {
        return Ok(None);
    };
    std::str::from_utf8(&value)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(|n| Some(Offset(n)))
        .ok_or_else(|| {
            backend(
                Inconsistent {
                    stream: shared.meta.cached_info().config.name.clone(),
                    reason: format!("key {key} does not hold an offset"),
                },
                false,
            )
        })
}
