#!/bin/sh
# A worker command for the `ship` task of the README's order example. raftflow runs it once
# per task: the workflow's context arrives as JSON on stdin, the task in RAFTFLOW_* variables.
# It fails its first attempt (exit status 75, a message on stderr) and succeeds on the retry,
# printing the output that raftflow merges into the workflow's context.
order=$(cat)
echo "shipping order $RAFTFLOW_WORKFLOW_ID ($order), attempt $RAFTFLOW_ATTEMPT" >&2
if [ "$RAFTFLOW_ATTEMPT" = 1 ]; then
  echo "carrier API timed out" >&2
  exit 75
fi
echo "{\"tracking\": \"T-$RAFTFLOW_WORKFLOW_ID\"}"
