//! Signaling protocol v1: typed messages and the pure parser.
