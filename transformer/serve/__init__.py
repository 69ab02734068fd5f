"""`transformer-serve`: a trained run behind an HTTP address, with a page that shows its attention.

    app.py       create_app(translator, settings): the routes, the errors, the page at /
    batcher.py   Batcher: concurrent requests gathered into token-budget batches
    ctranslate2_engine.py  CTranslate2Engine: /translate through a CTranslate2 export
    schemas.py   the JSON bodies, and the checks of a request against the model and the limits
    settings.py  ServeSettings: the limits and batching (the command's options)
    static/      the page: plain HTML, CSS and JavaScript, shipped with the package

Everything but settings.py needs the `serve` extra (FastAPI, uvicorn): pip install -e '.[serve]'.
"""
