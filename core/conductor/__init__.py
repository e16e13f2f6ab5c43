"""The conductor: builds, deletes, agent events, moves, shelving, power and interfaces."""
