"""The engine: the facade, flights, workers and the state they share.

Nothing here imports a backend, the command line or the screens
(import-linter checks it): the Redis backend meets the engine only through
the `Backend` and `Observed` protocols, one level below both.
"""
