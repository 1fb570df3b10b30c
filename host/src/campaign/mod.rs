//! Campaigns: the document operators write ([`spec`]) and the watched folder of campaign
//! files that applies them without a restart ([`watcher`]).

pub mod spec;
pub mod watcher;

pub use spec::{Campaign, CampaignSpec, SpecError, WindowState, validate_id};
