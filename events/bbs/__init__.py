r"""Diego BBS: the protobuf models, an mTLS client, the SSE event framing and the watcher.

    bbs.proto / bbs_pb2.py   our subset of BBS's models, upstream field numbers (docs/cf-facts.md §3.4-3.5)
    errors.py                what can fail talking to BBS, by what to do about it
    sse.py                   Server-Sent Events framing as BBS writes it (vito/go-sse), event payloads
    client.py                POST-with-protobuf list calls and the event streams, over mutual TLS
    view.py                  the watcher's picture of LRPs and the containers and app sets it implies
    watcher.py               `BbsWatcher`: list, follow events, publish container and app states

`bbs_pb2.py` and `bbs_pb2.pyi` are generated and committed. After editing `bbs.proto`, regenerate
them from the repository root with grpcio-tools' protoc:

    .venv/bin/python -m grpc_tools.protoc -I events/bbs \
        --python_out=events/bbs --pyi_out=events/bbs events/bbs/bbs.proto

The generated module checks at import that the protobuf runtime is at least the version that
generated it (see its header).
"""
