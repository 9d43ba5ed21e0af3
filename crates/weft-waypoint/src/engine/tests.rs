//! Table tests of the engine's phases, without sockets.
