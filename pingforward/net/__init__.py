"""The outbound network: where requests may go (policy), name lookups (resolver), connections (pool), and
the transport that puts them together for the forward, the sender and `check`.

Everything here raises only `pingforward.errors.OutboundError`s.
"""
