"""The REST API: one router per resource (`routes/`), request and response schemas (`schemas`),
and the dependencies routes share (`deps`)."""
