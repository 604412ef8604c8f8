//! The topic filters an MQTT session holds. Its own module because both the live connection
//! (`session`) and the persistent-session store (`persistent`) keep them, and neither should
//! depend on the other.

use rmqtt_codec::v3::QoS;

use super::topics::Subscription;

/// The topic filters a session holds, with the QoS granted for each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Subscriptions {
    present: u8,
    qos1: u8,
}

impl Subscriptions {
    pub(crate) fn insert(&mut self, kind: Subscription, qos: QoS) {
        self.present |= kind.bit();
        if qos == QoS::AtMostOnce {
            self.qos1 &= !kind.bit();
        } else {
            self.qos1 |= kind.bit();
        }
    }

    pub(crate) fn remove(&mut self, kind: Subscription) {
        self.present &= !kind.bit();
        self.qos1 &= !kind.bit();
    }

    pub(crate) fn get(&self, kind: Subscription) -> Option<QoS> {
        if self.present & kind.bit() == 0 {
            None
        } else if self.qos1 & kind.bit() == 0 {
            Some(QoS::AtMostOnce)
        } else {
            Some(QoS::AtLeastOnce)
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.present == 0
    }

    /// Four "present" bits, then four "QoS 1" bits.
    pub(crate) fn to_bits(self) -> u8 {
        self.present | (self.qos1 << 4)
    }

    /// The inverse of [`to_bits`](Self::to_bits); `None` for bits no subscription uses.
    pub(crate) fn from_bits(bits: u8) -> Option<Self> {
        let (present, qos1) = (bits & 0x0F, bits >> 4);
        (qos1 & !present == 0).then_some(Subscriptions { present, qos1 })
    }

    pub(crate) fn iter(self) -> impl Iterator<Item = (Subscription, QoS)> {
        Subscription::ALL
            .into_iter()
            .filter_map(move |kind| self.get(kind).map(|qos| (kind, qos)))
    }
}
