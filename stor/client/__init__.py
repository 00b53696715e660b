"""The `stor` client: put, get, exists and cat against any stor server, over HTTP.

Nothing here imports the server (no uvicorn, Starlette, bcrypt, botocore): the
client is what a pipeline runs on machines that never serve, and it starts in
the time a shell loop can afford. Its libraries: httpx (connection pools,
streaming), h11 (the one upload httpx cannot make: `Expect: 100-continue`)
and rich (progress bars).
"""
