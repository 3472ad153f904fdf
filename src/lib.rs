//! ringbench as a library: the layers of docs/architecture.md, floor by floor. The binary (`main.rs`) is the
//! command line over them; integration tests use them directly.

pub mod backend;
pub mod bench;
pub mod calibrate;
pub mod chart;
pub mod cli;
pub mod comm;
pub mod commands;
pub mod config;
pub mod console;
pub mod fault;
pub mod generator;
pub mod harness;
pub mod info;
pub mod journal;
pub mod launch;
pub mod metrics;
pub mod model;
pub mod output;
pub mod plan;
pub mod report;
pub mod selftest;
pub mod strategy;
pub mod sweep;
pub mod timing;
pub mod topology;
