use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// Memory logs that count how often one was opened, and take a moment to open (so that callers
/// arriving together overlap the opening).
#[derive(Debug, Default)]
struct CountingFactory {
    opened: Arc<AtomicUsize>,
}

#[async_trait]
impl LogFactory for CountingFactory {
    async fn open_log(&self, _topic: &TopicName, partitions: u32) -> Result<Arc<dyn Log>> {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        self.opened.fetch_add(1, Ordering::SeqCst);
        Ok(Arc::new(MemoryLog::new(partitions)?))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_arriving_together_share_one_opening_of_a_topic() {
    let opened = Arc::new(AtomicUsize::new(0));
    let topics = Arc::new(Topics::new(
        CountingFactory {
            opened: opened.clone(),
        },
        2,
    ));
    let lookups: Vec<_> = (0..16)
        .map(|i| {
            let topics = topics.clone();
            let name = if i % 2 == 0 { "alerts" } else { "telemetry" };
            tokio::spawn(async move { (name, topics.topic(name).await.unwrap()) })
        })
        .collect();
    let mut logs: HashMap<&str, Vec<Arc<dyn Log>>> = HashMap::new();
    for lookup in lookups {
        let (name, log) = lookup.await.unwrap();
        logs.entry(name).or_default().push(log);
    }
    assert_eq!(opened.load(Ordering::SeqCst), 2, "each topic opened once");
    for same in logs.values() {
        assert!(same.iter().all(|log| Arc::ptr_eq(log, &same[0])));
    }
    // Open topics are found without opening again, also with another partition count.
    let again = topics.topic_with_partitions("alerts", 8).await.unwrap();
    assert!(Arc::ptr_eq(&again, &logs["alerts"][0]));
    assert_eq!(again.partition_count(), 2);
    assert_eq!(opened.load(Ordering::SeqCst), 2);
    let names: Vec<String> = topics
        .open_topics()
        .await
        .iter()
        .map(|n| n.as_str().to_owned())
        .collect();
    assert_eq!(names, ["alerts", "telemetry"]);
}

#[tokio::test]
async fn a_failed_opening_is_not_kept() {
    #[derive(Debug)]
    struct FailsOnce(AtomicUsize);
    #[async_trait]
    impl LogFactory for FailsOnce {
        async fn open_log(&self, _topic: &TopicName, partitions: u32) -> Result<Arc<dyn Log>> {
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(crate::Error::Config {
                    reason: "the first opening fails".into(),
                });
            }
            Ok(Arc::new(MemoryLog::new(partitions)?))
        }
    }
    let topics = Topics::new(FailsOnce(AtomicUsize::new(0)), 1);
    assert!(topics.topic("t").await.is_err());
    assert!(topics.open_topics().await.is_empty());
    assert!(topics.topic("t").await.is_ok());
}
