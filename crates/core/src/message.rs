//! Queue messages for deployments where the queue is separate from the store (SQS). Every
//! message carries a version so that old and new workers can run side by side during a rolling
//! deploy: a worker acks-and-ignores nothing; it returns versions it does not know to the queue
//! for a newer worker.
use serde::{Deserialize, Serialize};

use crate::id::CallbackId;
use crate::tenant::TenantId;

pub const CURRENT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum QueueMessage {
    /// Attempt delivery of this callback if it is still due.
    Deliver {
        v: u32,
        callback_id: CallbackId,
        /// The callback's tenant, when the sender knew it: saves the worker a read before its
        /// claim. Optional, so messages without it (older senders) still work.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant: Option<TenantId>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("message version {0} is newer than this worker understands")]
    UnknownVersion(u32),
    #[error("malformed queue message: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl QueueMessage {
    pub fn deliver(callback_id: CallbackId) -> Self {
        QueueMessage::Deliver {
            v: CURRENT_VERSION,
            callback_id,
            tenant: None,
        }
    }

    pub fn deliver_for(callback_id: CallbackId, tenant: TenantId) -> Self {
        QueueMessage::Deliver {
            v: CURRENT_VERSION,
            callback_id,
            tenant: Some(tenant),
        }
    }

    pub fn decode(text: &str) -> Result<Self, MessageError> {
        let msg: QueueMessage = serde_json::from_str(text)?;
        match &msg {
            QueueMessage::Deliver { v, .. } if *v > CURRENT_VERSION => {
                Err(MessageError::UnknownVersion(*v))
            }
            _ => Ok(msg),
        }
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("queue messages always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_future_versions() {
        let id = CallbackId::generate();
        let text = QueueMessage::deliver(id).encode();
        assert_eq!(
            QueueMessage::decode(&text).unwrap(),
            QueueMessage::deliver(id)
        );
        let future = text.replace("\"v\":1", "\"v\":2");
        assert!(matches!(
            QueueMessage::decode(&future),
            Err(MessageError::UnknownVersion(2))
        ));
        assert!(QueueMessage::decode("{}").is_err());
        // The tenant is optional both ways: old messages decode, new ones carry it.
        let with = QueueMessage::deliver_for(id, TenantId::default_tenant()).encode();
        assert!(with.contains("\"tenant\":\"default\""));
        assert_eq!(
            QueueMessage::decode(&with).unwrap(),
            QueueMessage::deliver_for(id, TenantId::default_tenant())
        );
        assert!(!text.contains("tenant"));
    }
}
