//! Registered destinations on DynamoDB: not stored yet. The trait's defaults answer reads with
//! no registrations (every callback goes by the tenant's and installation's settings) and
//! refuse writes as unsupported.
use fluxcb_core::ports::DestinationStore;

use super::DynamoStore;

impl DestinationStore for DynamoStore {}
