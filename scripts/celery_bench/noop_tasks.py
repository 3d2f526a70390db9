import os
import redis
from celery import Celery

app = Celery("bench", broker=os.environ["CELERY_BROKER"])
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=4, task_ignore_result=True,
                broker_connection_retry_on_startup=True)
counter = redis.Redis.from_url(os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0"))
KEY = os.environ.get("BENCH_KEY", "bakery:celery-bench")


@app.task
def noop():
    counter.incr(KEY)
