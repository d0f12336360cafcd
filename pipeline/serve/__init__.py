"""``dhmd-pipeline serve``: a trained model behind HTTP, and a web page to try it on one's own clip.

run.py loads the checkpoint and its extractors once and runs the server; app.py holds the routes
(``POST /predict``, ``GET /``, ``GET /health``, ``GET /model``), the token check and the bounded
queue; uploads.py streams an upload to a private temporary folder under a generated name and
checks it before any model sees it; static/ is the page (plain HTML, CSS and JavaScript).
"""
