"""The baseline: a stateless webhook receiver written the way Stripe's Flask sample is.

``request.data``, ``stripe.Webhook.construct_event(payload, sig_header, secret)``,
answer 200 ``{"received": true}``; nothing is stored. The benchmark runs it under the
same gunicorn settings as the service (``-c python:webhook_service.web.gunicorn_config``,
2 threaded workers) and reports every figure of the service as a ratio to it.
"""

from __future__ import annotations

import os

import stripe
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

endpoint_secret = os.environ["STRIPE_WEBHOOK_SECRET"].split(",")[0].strip()

app = Flask(__name__)


@app.route("/api/v1/billing/webhook", methods=["POST"])
def webhook() -> ResponseReturnValue:
    payload = request.data
    sig_header = request.headers.get("Stripe-Signature")
    try:
        event = stripe.Webhook.construct_event(payload, sig_header, endpoint_secret)
    except ValueError:
        return jsonify(error="invalid payload"), 400
    except stripe.SignatureVerificationError:
        return jsonify(error="invalid signature"), 400

    # Handle the event (the sample switches on the type and prints the unhandled ones).
    if event["type"] in ("customer.subscription.updated", "invoice.paid"):
        pass

    return jsonify(received=True)


@app.route("/healthz", methods=["GET"])
def healthz() -> ResponseReturnValue:
    return jsonify(status="ok")
