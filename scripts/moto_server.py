"""moto_server with DynamoDB's requests handled one at a time.

moto serves each request on its own thread, and its TransactWriteItems deep-copies the tables it
touches first and puts the copies back when a condition fails. A transaction that fails while
another request writes the same table therefore erases that write: an acknowledged write lost,
which DynamoDB itself never does (each write and each transaction is atomic). Optimistic
concurrency (conditioned writes that lose races and retry) runs into this all the time. One
lock around DynamoDB's requests keeps the emulator faithful; SQS (whose long polls wait) is not
affected. Same arguments as moto_server.
"""
import sys
import threading

from moto.dynamodb.responses import DynamoHandler
from moto.server import main

_dynamodb = threading.Lock()
_call_action = DynamoHandler.call_action


def _one_at_a_time(self):
    with _dynamodb:
        return _call_action(self)


DynamoHandler.call_action = _one_at_a_time

if __name__ == "__main__":
    sys.exit(main())
