//! `ringbench sweep`: where each strategy wins, and by how much. A grid of world sizes, sequence
//! lengths and K/V head counts; at each point of it, every strategy `--strategy` selects with every
//! split of the world it allows (tp x pp, ulysses x ring, tp x cp: every factorization) that
//! validates (under `--strategy all`, usp and tp-cp in two-dimensional splits only, as `run`
//! takes them). `--mode plan` asks the analytic model (`plan::project`) at every point, at any
//! scale. `--mode run` measures every point of the launch's world with `run`'s protocol (each a run
//! directory in --out, named by its config), resumable: a rerun skips the points already complete
//! and redoes one a signal interrupted, whose files are moved aside, never deleted.
//!
//! What it writes to `--out DIR`: `sweep.csv` (every point), `best.csv` (per world, K/V heads and
//! length, the fastest strategy and split that fits, and by how much), `crossovers.csv` (per world
//! and pair of strategies, the lengths between which the faster of the two changes), and per world
//! a chart of tokens/s against sequence length (log axes) with the crossovers marked. A strategy's
//! figure at a point is its fastest split that fits one GPU.

pub mod chart;
pub mod claim;
pub mod grid;
pub mod point;
pub mod rank;
pub mod run;
pub mod tables;

pub use grid::{grid, grid_on};
pub use rank::{best, crossovers, evaluate, Best, Crossover};
pub use run::{point_id, run_points, Launched};
pub use tables::{progress, render, write};

pub use point::{Basis, Measured, Point, SweepGrid};
