"""A Flask API with /login and /api/protected on tokenwatch.

tokenwatch checks passwords, issues the tokens and records every login; this
app verifies tokens locally with tokenwatch's public keys and reports each
access decision to tokenwatch's audit trail in the background.

    pip install './clients/python[flask]'
    TOKENWATCH_URL=http://localhost:8080 TOKENWATCH_INGEST_KEY=twk_... python flask_api.py
"""

import os

from flask import Flask, request

from tokenwatch.flask import Tokenwatch

app = Flask(__name__)
tw = Tokenwatch(
    app,
    url=os.environ.get("TOKENWATCH_URL", "http://localhost:8080"),
    issuer=os.environ.get("TOKENWATCH_ISSUER"),  # unset: read from tokenwatch's discovery document
    ingest_key=os.environ.get("TOKENWATCH_INGEST_KEY"),  # from `tokenwatch sources add my-api`
)


@app.post("/login")
def login():
    body = request.get_json(silent=True) or {}
    return tw.login(body.get("username", ""), body.get("password", ""))


@app.get("/api/protected")
@tw.require
def protected():
    return {"message": f"Hello, {tw.token.username}!"}


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
