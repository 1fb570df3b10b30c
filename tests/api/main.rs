//! Integration tests of the firstcome host against real services: Redis, MariaDB and
//! PostgreSQL (see `helpers` for where they are looked for), and the embedded default.

mod admission_suite;
mod bad_input;
mod browser;
mod campaigns;
mod clocks;
mod cluster;
mod concurrency;
mod durability;
mod events;
mod faults;
mod grants;
mod helpers;
mod kafka;
mod lanes;
mod languages;
mod limits;
mod metrics;
mod openapi;
mod operators;
mod page;
mod plugins;
mod prometheus;
mod refused_writes;
mod removal;
mod retention;
mod reuse;
mod scale_out;
mod shards;
mod shoppers;
mod soak;
mod stalls;
mod startup;
mod streams;
