//! How topics, partitions and groups map onto JetStream names.
//!
//! One stream per (topic, partition), holding one subject. Topic and group names may contain `.`,
//! which separates subject tokens and is not allowed in stream names, so both are escaped the
//! same way: `_` becomes `_u` and `.` becomes `_d`. The escape is injective and leaves `_p`, the
//! separator before the partition number, unambiguous.

use iot_core::{Error, GroupName, PartitionId, Result, TopicName};

/// Stream names end up as directory names on the server; keep them well under 255 bytes.
const MAX_STREAM_NAME: usize = 200;

fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        match c {
            '_' => out.push_str("_u"),
            '.' => out.push_str("_d"),
            c => out.push(c),
        }
    }
    out
}

/// The JetStream names of one topic.
#[derive(Clone, Debug)]
pub(crate) struct TopicNames {
    prefix: String,
    topic: String,
}

impl TopicNames {
    pub(crate) fn new(prefix: &str, topic: &TopicName) -> Result<Self> {
        let names = TopicNames {
            prefix: prefix.to_owned(),
            topic: escape(topic.as_str()),
        };
        let longest = names.stream(PartitionId(u32::MAX));
        if longest.len() > MAX_STREAM_NAME {
            return Err(Error::Config {
                reason: format!(
                    "topic {topic} makes JetStream stream names of {} bytes, above the {MAX_STREAM_NAME} this adapter allows",
                    longest.len()
                ),
            });
        }
        Ok(names)
    }

    /// `PREFIX-TOPIC_pN`.
    pub(crate) fn stream(&self, partition: PartitionId) -> String {
        format!("{}-{}_p{}", self.prefix, self.topic, partition.get())
    }

    /// `PREFIX.log.TOPIC.N`: the partition's stream holds `PREFIX.log.TOPIC.N.*`, one subject
    /// per writer.
    pub(crate) fn subject(&self, partition: PartitionId) -> String {
        format!("{}.log.{}.{}", self.prefix, self.topic, partition.get())
    }

    /// Metadata key of the topic's partition count: `topic.TOPIC`.
    pub(crate) fn topic_key(&self) -> String {
        format!("topic.{}", self.topic)
    }

    /// Metadata key of a group's commit: `group.TOPIC.GROUP.N`.
    pub(crate) fn group_key(&self, group: &GroupName, partition: PartitionId) -> String {
        format!(
            "group.{}.{}.{}",
            self.topic,
            escape(group.as_str()),
            partition.get()
        )
    }
}

/// The stream holding metadata: topics' partition counts and groups' commits, one subject per
/// key, keeping each subject's last message only — a key-value store.
pub(crate) fn meta_stream(prefix: &str) -> String {
    format!("{prefix}-meta")
}

/// The subject of metadata key `key`: `PREFIX.meta.KEY`.
pub(crate) fn meta_subject(prefix: &str, key: &str) -> String {
    format!("{prefix}.meta.{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_injectively() {
        let t = |s: &str| TopicNames::new("iot", &TopicName::new(s).unwrap()).unwrap();
        assert_eq!(t("a.b").stream(PartitionId(3)), "iot-a_db_p3");
        assert_eq!(t("a_b").stream(PartitionId(3)), "iot-a_ub_p3");
        assert_eq!(t("a.").subject(PartitionId(0)), "iot.log.a_d.0");
        assert_ne!(
            t("a_p1").stream(PartitionId(2)),
            t("a").stream(PartitionId(12))
        );
        let g = GroupName::new("g.1").unwrap();
        assert_eq!(t("x").group_key(&g, PartitionId(4)), "group.x.g_d1.4");
    }

    #[test]
    fn overlong_names_are_refused() {
        let long = TopicName::new(".".repeat(0) + &"a.".repeat(64)).unwrap();
        assert!(matches!(
            TopicNames::new("iot", &long),
            Err(Error::Config { .. })
        ));
    }
}
