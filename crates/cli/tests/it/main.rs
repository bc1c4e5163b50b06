//! Integration tests of the `floodgate` binary itself: real `floodgate serve` processes
//! receiving real signals and losing their log readers (the shutdown and logging claims can
//! only be proven on a real process).

mod broken_pipes;
mod cluster;
mod cluster_failures;
mod descriptors;
mod durability;
mod exactly_once;
mod lab_durable;
mod lab_scale_out;
mod secure_config;
mod settings;
mod shutdown;
mod signals;
mod storage_failure;
mod support;
