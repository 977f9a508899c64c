"""The auth benchmark's TLS server: HTTP/1.1 keep-alive over OpenSSL (Python's ssl), answering
every GET with 200 and a small JSON body, like a token lookup. Usage: CERT KEY [PORT] (default: any
free port). Prints its port, then serves."""
import http.server
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One write per response: headers and body in separate writes meet the client's delayed ACK
    # (Nagle), 40 ms per request.
    wbufsize = 65536

    def do_GET(self):
        body = b'{"data":{"ttl":3600}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


cert, key = sys.argv[1], sys.argv[2]
port = int(sys.argv[3]) if len(sys.argv) > 3 else 0
server = http.server.HTTPServer(("127.0.0.1", port), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
