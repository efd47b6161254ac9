//! Shared start-up for the Lambda entry points.
