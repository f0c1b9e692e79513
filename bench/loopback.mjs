// Preloaded into Portkey's gateway (node --import): its start-server.js takes a port
// (--port=N) but no host, and would listen on every interface. This binds a listen() that
// names no host to 127.0.0.1 instead.
import net from "node:net";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" && typeof args[1] !== "string") {
    if (args.length > 1 && args[1] === undefined) args[1] = "127.0.0.1";
    else args.splice(1, 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};
