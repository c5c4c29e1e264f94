# The Sidekiq side of bench/queues.py: a job that records when it started, and (with CRON_QUEUE set)
# a sidekiq-cron job on that queue every second, polled at sidekiq-cron's fastest setting (1 s).
require "sidekiq"
require "json"

class BenchJob
  include Sidekiq::Worker

  def perform(*_args)
    line = JSON.dump({"id" => jid, "started" => Time.now.to_f})
    File.open(ENV.fetch("BENCH_OUT"), "a") { |f| f.puts(line) }
  end
end

if ENV["CRON_QUEUE"]
  require "sidekiq/cron"
  Sidekiq.options[:cron_poll_interval] = 1
  Sidekiq.configure_server do |config|
    config.on(:startup) do
      Sidekiq::Cron::Job.create(
        name: "bench-#{ENV["CRON_QUEUE"]}", cron: "* * * * * *", class: "BenchJob", queue: ENV["CRON_QUEUE"]
      )
    end
  end
end
