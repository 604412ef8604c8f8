//! The data pump: raw records into a sink (normally a state store's history).

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use iot_core::{DeviceId, PartitionId, StoredRecord};

use super::{device_of, event_time, position_of};
use crate::error::Result;
use crate::processor::{Context, ProcessorFactory, StreamProcessor};
use crate::state::{Event, StateStore};

/// Where a [`Pump`] writes. Every [`StateStore`] is one (its history).
#[async_trait]
pub trait EventSink: Send + Sync + Debug + 'static {
    /// Writes `events` of `device`. Must tolerate redelivered events (each carries its source
    /// position).
    async fn write(&self, device: &DeviceId, events: Vec<Event>) -> Result<()>;
}

#[async_trait]
impl<T: StateStore + ?Sized> EventSink for T {
    async fn write(&self, device: &DeviceId, events: Vec<Event>) -> Result<()> {
        self.append_events(device, events).await.map(|_| ())
    }
}

/// Copies every record into a sink as an [`Event`]: time = device time (or enqueued time),
/// payload as is, source position for redelivery detection. A record whose key is not a valid
/// device id fails (and ends in the dead-letter topic).
#[derive(Debug, Clone)]
pub struct Pump {
    sink: Arc<dyn EventSink>,
}

impl Pump {
    /// A pump into `sink`.
    pub fn new(sink: Arc<dyn EventSink>) -> Self {
        Pump { sink }
    }

    /// A pump into the history of a shared state store.
    pub fn to_store(store: Arc<dyn StateStore>) -> Self {
        Pump {
            sink: Arc::new(store),
        }
    }
}

#[async_trait]
impl StreamProcessor for Pump {
    async fn process(&mut self, batch: &[StoredRecord], _ctx: &mut Context) -> Result<()> {
        // Consecutive records of one device go in one write.
        let mut current: Option<(DeviceId, Vec<Event>)> = None;
        for record in batch {
            let device = device_of(record)?;
            let event = Event {
                time: event_time(record),
                source: Some(position_of(record)),
                payload: record.record.payload.clone(),
            };
            match &mut current {
                Some((d, events)) if *d == device => events.push(event),
                _ => {
                    if let Some((d, events)) = current.take() {
                        self.sink.write(&d, events).await?;
                    }
                    current = Some((device, vec![event]));
                }
            }
        }
        if let Some((d, events)) = current {
            self.sink.write(&d, events).await?;
        }
        Ok(())
    }
}

impl ProcessorFactory for Pump {
    fn create(&self, _partition: PartitionId) -> Result<Box<dyn StreamProcessor>> {
        Ok(Box::new(self.clone()))
    }
}
