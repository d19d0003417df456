"""The provider sandbox: a local server speaking the subset of the WeChat Official Account,
WeCom and Twilio HTTP APIs that Recall uses, at the providers' own paths, payloads and error
codes, so the real ``wechatpy`` / ``twilio`` SDKs talk to it with only the base URL changed.

    calls.py      Call / Outcome / Reply / ProviderError / Endpoint: the shared vocabulary
    wechat_oa.py  WeChat OA rules and pushes      wecom.py   WeCom tasks, join ways, pushes
    twilio_sms.py Twilio Messages, callbacks      tokens.py  access tokens per app
    record.py     every call received, compact    faults.py  injected misbehaviour
    outbox.py     queued callbacks, delivery      signing.py WeChat/WeCom push signatures
    state.py      SandboxState: all of the above behind one lock, usable without HTTP
    control.py    the /_sandbox control API       app.py     create_app(): the HTTP edge
    server.py     run_in_thread() / serve()       cli.py     `recall sandbox`

See docs/sandbox.md for every endpoint, rule, fault and control call.
"""
