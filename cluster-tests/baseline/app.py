"""The service many teams write before they reach for a workflow engine: Flask on Redis.

POST /start_workflow  INCRs an id and HSETs the new workflow's status and context.
POST /complete_task   HSETs its task's status and output, and the workflow's status.

raftflow-bench runs it under gunicorn beside raftflow's single-task workflows (start, poll,
complete), with Redis appending every write to its log and fsyncing it either on every write
(`appendfsync always`) or once a second (`everysec`). One Redis, no replica: what a node's loss
costs is the point of the comparison.
"""

import json
import os

import redis
from flask import Flask, jsonify, request

app = Flask(__name__)
db = redis.Redis(
    host="127.0.0.1", port=int(os.environ["BASELINE_REDIS_PORT"]), decode_responses=True
)


@app.post("/start_workflow")
def start_workflow():
    body = request.get_json(force=True, silent=True) or {}
    workflow_id = db.incr("workflow:next")
    db.hset(
        f"workflow:{workflow_id}",
        mapping={
            "status": "running",
            "task": "pending",
            "context": json.dumps(body.get("context") or {}),
        },
    )
    return jsonify({"id": workflow_id, "status": "running"}), 201


@app.post("/complete_task")
def complete_task():
    body = request.get_json(force=True, silent=True) or {}
    key = f"workflow:{body.get('id')}"
    if not db.exists(key):
        return jsonify({"error": "not_found"}), 404
    db.hset(
        key,
        mapping={
            "task": "completed",
            "status": "succeeded",
            "output": json.dumps(body.get("output") or {}),
        },
    )
    return jsonify({"id": body.get("id"), "status": "succeeded"})


@app.get("/healthz")
def healthz():
    db.ping()
    return "ok"
