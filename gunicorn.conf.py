# gunicorn reads ./gunicorn.conf.py by default; the settings live in the package.
from webhook_service.web.gunicorn_config import *  # noqa: F403
